# The gateway image (also runs the simulators: `flux-gateway simulate`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
COPY config ./config
RUN pip install --no-cache-dir .
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_CATALOG_PATH=/app/config/models.yaml
EXPOSE 8080
CMD ["flux-gateway", "serve"]
