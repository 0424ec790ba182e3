import copy

import pytest
import yaml

from gateway.catalog import Catalog, CatalogError
from gateway.settings import PROJECT_ROOT

CATALOG_FILE = PROJECT_ROOT / "config" / "models.yaml"


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(CATALOG_FILE.read_text())


def test_resolves_canonical_alias_and_pinned_names() -> None:
    catalog = Catalog.from_yaml(CATALOG_FILE)
    canonical = catalog.resolve("flux.2-klein-4b")
    assert canonical is not None and canonical.pinned_provider is None
    assert catalog.resolve("flux-2-klein-4b").model is canonical.model
    for name, provider in [
        ("fal/flux.2-klein-4b", "fal"),
        ("fal/flux.2-klein-4b-edit", "fal"),
        ("replicate/flux.2-klein-4b", "replicate"),
        ("fal/flux-2-klein-4b", "fal"),  # provider + alias pins too
    ]:
        ref = catalog.resolve(name)
        assert ref is not None and ref.model is canonical.model and ref.pinned_provider == provider
    assert catalog.resolve("dall-e-3") is None
    assert catalog.resolve("openai/flux.2-klein-4b") is None


def test_bad_price_names_the_field(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    broken["models"][0]["deployments"][0]["pricing"]["output_usd_per_mp"] = "cheap"
    with pytest.raises(CatalogError, match=r"models\.0\.deployments\.0\.pricing\.output_usd_per_mp"):
        Catalog.from_dict(broken)


def test_unknown_provider_is_refused(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    broken["models"][0]["deployments"][0]["provider"] = "stability"
    with pytest.raises(CatalogError, match="unknown provider 'stability'"):
        Catalog.from_dict(broken)


def test_unknown_field_is_refused(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    broken["models"][0]["limits"]["max_sidez"] = 10
    with pytest.raises(CatalogError, match=r"limits\.max_sidez"):
        Catalog.from_dict(broken)


def test_a_mode_without_deployment_is_refused(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    broken["models"][0]["deployments"] = [d for d in broken["models"][0]["deployments"] if "edit" not in d["modes"]]
    with pytest.raises(CatalogError, match="no deployment serves mode 'edit'"):
        Catalog.from_dict(broken)


def test_duplicate_table_size_is_refused(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    options = broken["models"][0]["deployments"][2]["sizes"]["options"]
    options.append(dict(options[0]))
    with pytest.raises(CatalogError, match="listed twice"):
        Catalog.from_dict(broken)


def test_missing_file_names_the_path(tmp_path) -> None:
    with pytest.raises(CatalogError, match="cannot read model catalog"):
        Catalog.from_yaml(tmp_path / "nope.yaml")


def test_a_second_model_is_a_yaml_edit(raw: dict) -> None:
    extra = copy.deepcopy(raw["models"][0])
    extra["id"] = "flux.2-klein-9b"
    extra["aliases"] = ["flux-2-klein-9b"]
    for deployment in extra["deployments"]:
        deployment["key"] = deployment["key"].replace("4b", "9b")
    catalog = Catalog.from_dict({"models": [raw["models"][0], extra]})
    assert catalog.resolve("replicate/flux.2-klein-9b").model.id == "flux.2-klein-9b"
