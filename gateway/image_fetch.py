"""Fetch provider images for `response_format=b64_json`: streamed, size-capped, verified, then encoded.

The fetch uses its own HTTP client without provider credentials: image URLs are CDN links, and a key
must never travel to them. Pillow's header check and base64 encoding run off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io

import httpx
from PIL import Image, UnidentifiedImageError

from gateway.exceptions import ProviderTimeout, ProviderUnavailable
from gateway.types import ImageFormat, ImageRequest, ProviderImage

_PILLOW_FORMATS = {"PNG": ImageFormat.PNG, "JPEG": ImageFormat.JPEG, "WEBP": ImageFormat.WEBP}


class ImageFetcher:
    """Downloads provider images and returns them base64-encoded, checked against the request."""

    def __init__(self, client: httpx.AsyncClient, max_bytes: int) -> None:
        self._client = client
        self._max_bytes = max_bytes

    async def fetch_b64(self, image: ProviderImage, request: ImageRequest, provider: str) -> str:
        """The image's bytes as base64, after checking they are the requested format and size."""
        data = await self._download(image.url, provider)
        return await asyncio.to_thread(_verify_and_encode, data, request, provider)

    async def _download(self, url: str, provider: str) -> bytes:
        if url.startswith("data:"):
            return _decode_data_uri(url, provider)
        if not url.startswith(("http://", "https://")):
            raise ProviderUnavailable("The provider returned an image URL the gateway cannot fetch.", provider=provider)
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ProviderUnavailable(
                        f"Fetching the generated image failed with HTTP {response.status_code}.", provider=provider
                    )
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise ProviderUnavailable(
                            f"The generated image is larger than {self._max_bytes} bytes.", provider=provider
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise ProviderTimeout("Fetching the generated image timed out.", provider=provider) from None
        except httpx.HTTPError:
            raise ProviderUnavailable("Fetching the generated image failed.", provider=provider) from None
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._client.aclose()


def _decode_data_uri(url: str, provider: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise ProviderUnavailable("The provider returned a data URI that is not base64.", provider=provider)
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ProviderUnavailable("The provider returned a corrupt data URI.", provider=provider) from None


def _verify_and_encode(data: bytes, request: ImageRequest, provider: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, size = _PILLOW_FORMATS.get(image.format or ""), image.size
    except (UnidentifiedImageError, OSError):
        raise ProviderUnavailable("The provider returned bytes that are not an image.", provider=provider) from None
    if fmt is not request.output_format or size != request.size:
        raise ProviderUnavailable(
            f"The provider returned a {size[0]}x{size[1]} {fmt.value if fmt else 'unknown'} image instead of "
            f"{request.width}x{request.height} {request.output_format.value}.",
            provider=provider,
        )
    return base64.b64encode(data).decode("ascii")
