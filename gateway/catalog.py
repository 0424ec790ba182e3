"""The model catalog: canonical ids, aliases, limits and provider deployments, loaded from YAML.

`config/models.yaml` is validated with pydantic at start-up (a bad file fails with the field's path in the
message) and turned into frozen dataclasses. Lookups (`Catalog.resolve`) are dict hits on the hot path.
A requested model may be a canonical id, an alias, a deployment key (`fal/flux.2-klein-4b`) or
`<provider>/<id or alias>`; the last two pin the provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.pricing import InputBilling, OutputBasis, PricingRule, Rounding, parse_usd_micros
from gateway.routing.config import HedgeConfig, Policy, RoutingConfig
from gateway.sizes import FreeSizes, SizeCapability, SizeOption, TableSizes
from gateway.types import Mode


@dataclass(frozen=True, slots=True)
class Limits:
    """What a model accepts, independent of provider."""

    min_side: int
    max_side: int
    max_n: int
    max_input_images: int
    supports_mask: bool


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model served by one provider under one provider model id."""

    key: str
    provider: str
    model_id: str
    provider_model: str
    modes: frozenset[Mode]
    sizes: SizeCapability
    pricing: PricingRule


@dataclass(frozen=True, slots=True)
class Model:
    """A model as clients name it, with every deployment that serves it."""

    id: str
    name: str
    owned_by: str
    created: int
    aliases: tuple[str, ...]
    modes: frozenset[Mode]
    limits: Limits
    default_size: tuple[int, int]
    deployments: tuple[Deployment, ...]
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def deployments_for(self, mode: Mode, provider: str | None = None) -> tuple[Deployment, ...]:
        return tuple(d for d in self.deployments if mode in d.modes and (provider is None or d.provider == provider))


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A resolved `model` field: the model, and the provider it pins, if any."""

    model: Model
    pinned_provider: str | None = None


class CatalogError(ValueError):
    """The catalog file is missing or invalid; the message names the file and the field."""


class Catalog:
    """All models, indexed by every name a client may use."""

    def __init__(self, models: Iterable[Model]) -> None:
        self.models: tuple[Model, ...] = tuple(models)
        self._refs: dict[str, ModelRef] = {}
        for model in self.models:
            for name in (model.id, *model.aliases):
                self._add(name, ModelRef(model))
            for deployment in model.deployments:
                self._add(deployment.key, ModelRef(model, deployment.provider))
                for name in (model.id, *model.aliases):
                    self._refs.setdefault(f"{deployment.provider}/{name}", ModelRef(model, deployment.provider))

    def _add(self, name: str, ref: ModelRef) -> None:
        if name in self._refs and self._refs[name].model is not ref.model:
            raise CatalogError(f"model name {name!r} is used by both {self._refs[name].model.id} and {ref.model.id}")
        self._refs[name] = ref

    def resolve(self, name: str) -> ModelRef | None:
        """The model (and pinned provider) a client's `model` field names, or None."""
        return self._refs.get(name)

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return tuple(d for m in self.models for d in m.deployments)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Catalog:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CatalogError(f"cannot read model catalog {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise CatalogError(f"model catalog {path} is not valid YAML: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<catalog>") -> Catalog:
        try:
            spec = CatalogSpec.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
            )
            raise CatalogError(f"invalid model catalog {source}: {problems}") from None
        return cls(m.build() for m in spec.models)


# --- YAML schema (pydantic at the edge, dataclasses inside) --------------------------------------------

_Strict = ConfigDict(extra="forbid", frozen=True)
UsdAmount = Annotated[str, Field(pattern=r"^\d+(\.\d+)?$")]


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


class FreeSizesSpec(BaseModel):
    model_config = _Strict
    kind: Literal["free"]
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=1)
    multiple_of: int = Field(default=1, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)

    def build(self) -> FreeSizes:
        return FreeSizes(self.min_side, self.max_side, self.multiple_of, self.max_pixels)


class SizeOptionSpec(BaseModel):
    model_config = _Strict
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    megapixels: UsdAmount  # a decimal string, like the provider's own tier names
    params: dict[str, Any] = Field(default_factory=dict)


class TableSizesSpec(BaseModel):
    model_config = _Strict
    kind: Literal["table"]
    options: list[SizeOptionSpec] = Field(min_length=1)

    @field_validator("options")
    @classmethod
    def _unique(cls, options: list[SizeOptionSpec]) -> list[SizeOptionSpec]:
        seen: set[tuple[int, int]] = set()
        for option in options:
            if (option.width, option.height) in seen:
                raise ValueError(f"size {option.width}x{option.height} is listed twice")
            seen.add((option.width, option.height))
        return options

    def build(self) -> TableSizes:
        return TableSizes(
            tuple(SizeOption(o.width, o.height, Fraction(o.megapixels), dict(o.params)) for o in self.options)
        )


class PricingSpec(BaseModel):
    model_config = _Strict
    output_usd_per_mp: UsdAmount
    input_usd_per_mp: UsdAmount = "0"
    mp_divisor: int = Field(default=1_048_576, ge=1)
    rounding: Rounding = Rounding.CEIL
    min_mp_per_image: UsdAmount = "0"
    input_max_mp: UsdAmount | None = None
    input_billing: InputBilling = InputBilling.PER_REQUEST
    output_basis: OutputBasis = OutputBasis.PIXELS

    @field_validator("output_usd_per_mp", "input_usd_per_mp")
    @classmethod
    def _whole_micros(cls, value: str) -> str:
        parse_usd_micros(value)
        return value

    def build(self) -> PricingRule:
        return PricingRule(
            output_micros_per_mp=parse_usd_micros(self.output_usd_per_mp),
            input_micros_per_mp=parse_usd_micros(self.input_usd_per_mp),
            mp_divisor=self.mp_divisor,
            rounding=self.rounding,
            min_mp_per_image=Fraction(self.min_mp_per_image),
            input_max_mp=Fraction(self.input_max_mp) if self.input_max_mp is not None else None,
            input_billing=self.input_billing,
            output_basis=self.output_basis,
        )


class DeploymentSpec(BaseModel):
    model_config = _Strict
    key: str = Field(pattern=r"^[a-z0-9-]+/[A-Za-z0-9._-]+$")
    provider: str = Field(min_length=1)
    provider_model: str = Field(min_length=1)
    modes: list[Mode] = Field(min_length=1)
    sizes: FreeSizesSpec | TableSizesSpec = Field(discriminator="kind")
    pricing: PricingSpec

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, provider: str) -> str:
        from providers import ADAPTERS

        if provider not in ADAPTERS:
            raise ValueError(f"unknown provider {provider!r}; known: {', '.join(sorted(ADAPTERS))}")
        return provider

    @model_validator(mode="after")
    def _key_names_provider(self) -> DeploymentSpec:
        if not self.key.startswith(f"{self.provider}/"):
            raise ValueError(f"deployment key {self.key!r} must start with its provider, '{self.provider}/'")
        return self


class LimitsSpec(BaseModel):
    model_config = _Strict
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=1)
    max_n: int = Field(default=4, ge=1)
    max_input_images: int = Field(default=1, ge=1)
    supports_mask: bool = False


class HedgeSpec(BaseModel):
    model_config = _Strict
    enabled: bool = False
    delay_s: float | None = Field(default=None, gt=0)  # None: the first candidate's p95 latency


class RoutingSpec(BaseModel):
    model_config = _Strict
    policy: Policy = Policy.COST
    balance_usd_per_s: UsdAmount = "0.001"
    latency_prior_s_per_mp: float = Field(default=5.0, gt=0)
    hedge: HedgeSpec = HedgeSpec()

    def build(self) -> RoutingConfig:
        return RoutingConfig(
            policy=self.policy,
            balance_micros_per_s=parse_usd_micros(self.balance_usd_per_s),
            latency_prior_s_per_mp=self.latency_prior_s_per_mp,
            hedge=HedgeConfig(self.hedge.enabled, self.hedge.delay_s),
        )


class ModelSpec(BaseModel):
    model_config = _Strict
    id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    name: str
    owned_by: str
    created: int = Field(ge=0)
    aliases: list[str] = Field(default_factory=list)
    modes: list[Mode] = Field(min_length=1)
    default_size: str = Field(default="1024x1024", pattern=r"^\d+x\d+$")
    limits: LimitsSpec
    routing: RoutingSpec = RoutingSpec()
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        keys = [d.key for d in self.deployments]
        if len(keys) != len(set(keys)):
            raise ValueError(f"deployment keys must be unique, got {keys}")
        for deployment in self.deployments:
            extra = set(deployment.modes) - set(self.modes)
            if extra:
                raise ValueError(f"deployment {deployment.key} serves modes {sorted(extra)} the model lacks")
        for mode in self.modes:
            if not any(mode in d.modes for d in self.deployments):
                raise ValueError(f"no deployment serves mode {mode.value!r}")
        return self

    def build(self) -> Model:
        deployments = tuple(
            Deployment(
                key=d.key,
                provider=d.provider,
                model_id=self.id,
                provider_model=d.provider_model,
                modes=frozenset(d.modes),
                sizes=d.sizes.build(),
                pricing=d.pricing.build(),
            )
            for d in self.deployments
        )
        limits = self.limits
        return Model(
            id=self.id,
            name=self.name,
            owned_by=self.owned_by,
            created=self.created,
            aliases=tuple(self.aliases),
            modes=frozenset(self.modes),
            limits=Limits(
                limits.min_side, limits.max_side, limits.max_n, limits.max_input_images, limits.supports_mask
            ),
            default_size=_size(self.default_size),
            deployments=deployments,
            routing=self.routing.build(),
        )


class CatalogSpec(BaseModel):
    model_config = _Strict
    models: list[ModelSpec] = Field(min_length=1)


def deployment_summary(deployment: Deployment) -> Mapping[str, Any]:
    """A JSON-ready description of a deployment for `GET /v1/models/{id}`."""
    from gateway.pricing import format_usd

    sizes = deployment.sizes
    size_info: dict[str, Any]
    if isinstance(sizes, FreeSizes):
        size_info = {
            "kind": "free",
            "min_side": sizes.min_side,
            "max_side": sizes.max_side,
            "multiple_of": sizes.multiple_of,
        }
    else:
        size_info = {"kind": "table", "sizes": [f"{o.width}x{o.height}" for o in sizes.options]}
    rule = deployment.pricing
    return {
        "key": deployment.key,
        "provider": deployment.provider,
        "provider_model": deployment.provider_model,
        "modes": sorted(m.value for m in deployment.modes),
        "sizes": size_info,
        "pricing": {
            "output_usd_per_mp": format_usd(rule.output_micros_per_mp),
            "input_usd_per_mp": format_usd(rule.input_micros_per_mp),
            "mp_divisor": rule.mp_divisor,
            "rounding": rule.rounding.value,
            "output_basis": rule.output_basis.value,
            "input_billing": rule.input_billing.value,
        },
    }
