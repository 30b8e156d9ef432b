"""The shipped hardware/model/cluster catalogs: completeness, provenance, sanity, TCO arithmetic, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from costmodels.catalog import (
    Catalog,
    CatalogError,
    ClusterInventory,
    DeviceClass,
    DevicePool,
    ModelKind,
    device_usd_per_h,
    list_clusters,
    load_catalog,
    load_cluster,
    repo_configs_dir,
)

REQUIRED_HARDWARE = {
    "h100-sxm",
    "h200-sxm",
    "b200",
    "a100-80g",
    "a100-40g",
    "l40s",
    "l4",
    "a10g",
    "t4",
    "mi300x",
    "gaudi2",
    "gaudi3",
    "xeon-8592",
    "epyc-9654",
}
REQUIRED_MODELS = {
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-72b-instruct",
    "mistral-7b-instruct-v0.3",
    "bge-small-en-v1.5",
    "all-minilm-l6-v2",
    "tiny-llama",
}
REQUIRED_CLUSTERS = ["homogeneous_h100", "homogeneous_b200", "mixed_fleet", "local"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    # An empty profiles folder: measured profiles in ./.hetagent must not replace the shipped entries here.
    return load_catalog(profiles=tmp_path_factory.mktemp("no-profiles"))


def _numeric_leaves(data: dict, prefix: str = ""):
    """Dotted names of every int/float leaf of a model_dump (nested dicts: peak_tflops, efficiency)."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_leaves(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name


# --------------------------------------------------------------------------- completeness


def test_required_entries_exist(catalog: Catalog) -> None:
    assert set(catalog.hardware) >= REQUIRED_HARDWARE, REQUIRED_HARDWARE - set(catalog.hardware)
    assert set(catalog.models) >= REQUIRED_MODELS, REQUIRED_MODELS - set(catalog.models)
    assert set(REQUIRED_CLUSTERS) <= set(list_clusters())


@pytest.mark.parametrize("name", sorted(REQUIRED_HARDWARE))
def test_every_set_number_of_a_device_has_a_source(catalog: Catalog, name: str) -> None:
    dev = catalog.device(name)
    leaves = set(_numeric_leaves(dev.model_dump(exclude_unset=True, exclude={"sources"})))
    missing = sorted(leaves - set(dev.sources))
    assert not missing, f"{name}: numbers without a source: {missing}"
    # ...and no source names a field that is not set (catches typos such as 'peak_tflop.bf16').
    stale = sorted(k for k in dev.sources if k not in leaves)
    assert not stale, f"{name}: sources for unset fields: {stale}"
    assert all(v.strip() for v in dev.sources.values())


@pytest.mark.parametrize("name", sorted(REQUIRED_MODELS))
def test_every_number_of_a_model_has_a_source(catalog: Catalog, name: str) -> None:
    model = catalog.model(name)
    leaves = set(_numeric_leaves(model.model_dump(exclude_unset=True, exclude={"sources"})))
    missing = sorted(leaves - set(model.sources))
    assert not missing, f"{name}: numbers without a source: {missing}"
    assert "dtype" in model.sources


def test_every_shipped_entry_has_sources(catalog: Catalog) -> None:
    """The provenance rule holds for every entry under configs/, not only the required ids (e.g. local-cpu)."""
    for entry in [*catalog.hardware.values(), *catalog.models.values()]:
        leaves = set(_numeric_leaves(entry.model_dump(exclude_unset=True, exclude={"sources"})))
        assert leaves <= set(entry.sources), (
            f"{entry.name}: numbers without a source: {sorted(leaves - set(entry.sources))}"
        )


@pytest.mark.parametrize("name", sorted(REQUIRED_HARDWARE))
def test_device_has_price_efficiency_and_16bit_peak(catalog: Catalog, name: str) -> None:
    dev = catalog.device(name)
    assert dev.price_usd_per_h is not None or dev.capex_usd is not None
    # Efficiency is a deliberate, sourced choice for every shipped device, never the silent default.
    assert {"compute", "memory"} <= dev.efficiency.model_fields_set
    assert dev.peak_flops("bf16") > 0 and dev.peak_flops("fp16") > 0
    assert dev.max_devices_per_node >= 1
    if dev.device_class is DeviceClass.cpu:
        assert dev.cores is not None and dev.max_devices_per_node == 2
    else:
        assert dev.cores is None and dev.max_devices_per_node == 8


# --------------------------------------------------------------------------- sanity relations


def test_hardware_relations(catalog: Catalog) -> None:
    d = catalog.device
    # Same GH100 compute, more and faster memory.
    assert d("h200-sxm").memory_gib > d("h100-sxm").memory_gib
    assert d("h200-sxm").memory_bandwidth_gb_s > d("h100-sxm").memory_bandwidth_gb_s
    assert d("h200-sxm").peak_flops("bf16") == d("h100-sxm").peak_flops("bf16")
    # Blackwell beats Hopper on compute, bandwidth and NVLink.
    assert d("b200").peak_flops("bf16") > d("h100-sxm").peak_flops("bf16")
    assert d("b200").memory_bandwidth_gb_s > d("h200-sxm").memory_bandwidth_gb_s
    assert d("b200").intra_node_link_gb_s > d("h100-sxm").intra_node_link_gb_s
    # A100 variants: same compute, 80 GB has more and faster memory.
    assert d("a100-80g").peak_flops("bf16") == d("a100-40g").peak_flops("bf16")
    assert d("a100-80g").memory_gib == 2 * d("a100-40g").memory_gib
    assert d("a100-80g").memory_bandwidth_gb_s > d("a100-40g").memory_bandwidth_gb_s
    # Dense, not sparse: H100 dense BF16 is 989 TFLOPS (1979 is the sparse figure).
    assert d("h100-sxm").peak_tflops["bf16"] == pytest.approx(1979 / 2, rel=0.01)
    # NVLink figures are per direction: H100 900 GB/s bidirectional, A100 600.
    assert d("h100-sxm").intra_node_link_gb_s == 900 / 2
    assert d("a100-80g").intra_node_link_gb_s == 600 / 2
    # Gaudi 3 scale-out: 3 of 24 x 200 GbE ports.
    assert d("gaudi3").network_gb_s == pytest.approx(3 * 200 / 8)
    # CPU DDR5 bandwidth = channels x MT/s x 8 bytes.
    assert d("xeon-8592").memory_bandwidth_gb_s == pytest.approx(8 * 5600 * 8 / 1000)
    assert d("epyc-9654").memory_bandwidth_gb_s == pytest.approx(12 * 4800 * 8 / 1000)
    # CPU peaks are computed: cores x base GHz x FLOPs/cycle.
    assert d("xeon-8592").peak_tflops["bf16"] == pytest.approx(64 * 1.9 * 1024 / 1000, rel=0.01)
    assert d("epyc-9654").peak_tflops["fp32"] == pytest.approx(96 * 2.4 * 32 / 1000, rel=0.01)


@pytest.mark.parametrize("name", sorted(REQUIRED_HARDWARE))
def test_dtype_ordering(catalog: Catalog, name: str) -> None:
    peaks = catalog.device(name).peak_tflops
    for narrow, wide in (("fp8", "bf16"), ("int8", "bf16"), ("bf16", "fp32"), ("fp16", "fp32")):
        if narrow in peaks and wide in peaks:
            assert peaks[narrow] >= peaks[wide], f"{name}: {narrow} peak below {wide}"


def test_model_constants_from_public_configs(catalog: Catalog) -> None:
    # Independent constants from meta-llama/Llama-3.1-8B-Instruct config.json: 32 layers, 8 KV heads,
    # head_dim 128, bf16 -> K and V for every layer.
    assert catalog.model("llama-3.1-8b-instruct").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    assert catalog.model("llama-3.1-70b-instruct").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert catalog.model("qwen2.5-7b-instruct").kv_bytes_per_token == 2 * 28 * 4 * 128 * 2
    assert catalog.model("tiny-llama").kv_bytes_per_token == 2 * 2 * 4 * 32 * 4
    assert (
        catalog.model("tiny-llama").weight_bytes
        == (2 * 2048 * 128 + 2 * (4 * 128 * 128 + 3 * 128 * 256 + 2 * 128) + 128) * 4
    )
    # 70B in bf16 (~141 GB) does not fit one H100 but fits one MI300X.
    w70 = catalog.model("llama-3.1-70b-instruct").weight_bytes
    assert catalog.device("h100-sxm").memory_bytes < w70 < catalog.device("mi300x").memory_bytes
    for name in REQUIRED_MODELS:
        m = catalog.model(name)
        assert m.heads * m.head_dim == m.hidden_size
        assert m.heads % m.kv_heads == 0
        assert (m.embedding_dim is not None) == (m.kind is ModelKind.embedding)


def _estimated_parameters(m) -> float:
    """Parameter count from the architecture alone (no biases; BERT: no position embeddings/pooler)."""
    h, L, ff, V = m.hidden_size, m.layers, m.intermediate_size, m.vocab_size
    attn = 2 * h * m.heads * m.head_dim + 2 * h * m.kv_heads * m.head_dim  # Q, O + K, V
    if m.kind is ModelKind.llm:  # gated MLP (gate, up, down), 2 RMSNorms; untied embedding + LM head
        return 2 * V * h + L * (attn + 3 * h * ff + 2 * h) + h
    return V * h + L * (attn + 2 * h * ff)  # BERT encoder: plain MLP (up, down)


@pytest.mark.parametrize("name", sorted(REQUIRED_MODELS))
def test_parameter_count_matches_architecture(catalog: Catalog, name: str) -> None:
    m = catalog.model(name)
    assert m.parameters == pytest.approx(_estimated_parameters(m), rel=0.05)


# --------------------------------------------------------------------------- clusters and TCO


@pytest.mark.parametrize("name", REQUIRED_CLUSTERS)
def test_cluster_loads_and_every_pool_is_priceable(catalog: Catalog, name: str) -> None:
    cluster = load_cluster(name, catalog)
    assert cluster.name == name
    catalog.check_cluster(cluster)
    cpu_sockets = 0
    for pool in cluster.devices:
        dev = catalog.device(pool.type)  # every device type exists in the catalog
        assert pool.per_node <= dev.max_devices_per_node, f"{name}/{pool.type}: per_node above the node limit"
        assert pool.count % pool.per_node == 0, f"{name}/{pool.type}: partial node"
        assert device_usd_per_h(dev, pool, cluster) > 0
        if dev.device_class is DeviceClass.cpu:
            cpu_sockets += pool.count
    assert cpu_sockets >= 1, f"{name}: host-only operators need a CPU pool"


def test_cluster_loads_by_name_with_the_default_catalog() -> None:
    assert load_cluster("mixed_fleet").pool("gaudi3").count == 16


@pytest.mark.parametrize("name", REQUIRED_CLUSTERS)
def test_cluster_economics_are_commented(name: str) -> None:
    lines = [ln.strip() for ln in (repo_configs_dir() / "clusters" / f"{name}.yaml").read_text().splitlines()]
    for key in ("electricity_usd_per_kwh", "pue", "amortisation_years"):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key}:"))
        assert i > 0 and lines[i - 1].startswith("#"), f"{name}: {key} needs a comment saying where it comes from"


def test_fleet_sizes(catalog: Catalog) -> None:
    h100 = load_cluster("homogeneous_h100", catalog)
    assert h100.pool("h100-sxm").count == 32 and h100.pool("xeon-8592").count == 8
    mixed = load_cluster("mixed_fleet", catalog)
    assert {p.type for p in mixed.devices} >= {"a100-80g", "l4", "gaudi3", "mi300x", "xeon-8592", "epyc-9654"}
    local = load_cluster("local", catalog)
    assert [(p.type, p.count, p.per_node) for p in local.devices] == [("local-cpu", 1, 1)]


def test_owned_device_usd_per_h_hand_worked(catalog: Catalog) -> None:
    gaudi3 = catalog.device("gaudi3")  # capex $15,625, 900 W
    cluster = ClusterInventory(
        name="t",
        electricity_usd_per_kwh=0.10,
        pue=1.5,
        amortisation_years=3,
        devices=[DevicePool(type="gaudi3", count=8, per_node=8)],
    )
    # 15625 / (3 * 8760) = 0.5945586; 0.9 kW * 1.5 * $0.10 = 0.135  ->  0.7295586 $/h
    assert device_usd_per_h(gaudi3, cluster.devices[0], cluster) == pytest.approx(0.7295586, rel=1e-6)
    # Same device in the shipped mixed fleet ($0.08/kWh, PUE 1.3, 4 years):
    # 15625 / 35040 = 0.4459189; 0.9 * 1.3 * 0.08 = 0.0936  ->  0.5395189 $/h
    mixed = load_cluster("mixed_fleet", catalog)
    assert device_usd_per_h(gaudi3, mixed.pool("gaudi3"), mixed) == pytest.approx(0.5395189, rel=1e-6)
    # Host Xeon 'owned' in the H100 cluster: 11600 / 35040 = 0.3310502; 0.35 * 1.3 * 0.08 = 0.0364
    h100 = load_cluster("homogeneous_h100", catalog)
    xeon = catalog.device("xeon-8592")
    assert device_usd_per_h(xeon, h100.pool("xeon-8592"), h100) == pytest.approx(0.3674502, rel=1e-6)


def test_cloud_price_and_overrides(catalog: Catalog) -> None:
    h100 = catalog.device("h100-sxm")
    cluster = load_cluster("homogeneous_h100", catalog)
    assert device_usd_per_h(h100, cluster.pool("h100-sxm"), cluster) == h100.price_usd_per_h
    cheap = DevicePool(type="h100-sxm", count=8, per_node=8, price_usd_per_h=2.49)
    assert device_usd_per_h(h100, cheap, cluster) == 2.49
    # Owned with a capex override: 35040 / 35040 = 1.0; 0.7 kW * 1.3 * 0.08 = 0.0728
    owned = DevicePool(type="h100-sxm", count=8, per_node=8, pricing="owned", capex_usd=35040)
    assert device_usd_per_h(h100, owned, cluster) == pytest.approx(1.0728)
    # Capex-only device forced to 'cloud' has no price.
    with pytest.raises(CatalogError, match="gaudi3"):
        device_usd_per_h(
            catalog.device("gaudi3"), DevicePool(type="gaudi3", count=8, per_node=8, pricing="cloud"), cluster
        )


# --------------------------------------------------------------------------- errors


def _mini_configs(root: Path, catalog: Catalog) -> Path:
    """A minimal valid configs/ tree (one device, one model) to corrupt in the tests below."""
    (root / "hardware").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "clusters").mkdir()
    dev = catalog.device("l4").model_dump(mode="json", exclude_unset=True)
    (root / "hardware" / "l4.yaml").write_text(yaml.safe_dump(dev))
    model = catalog.model("tiny-llama").model_dump(mode="json", exclude_unset=True)
    (root / "models" / "tiny.yaml").write_text(yaml.safe_dump([model]))
    return root


def test_mini_configs_load(tmp_path: Path, catalog: Catalog) -> None:
    cat = load_catalog(configs_dir=_mini_configs(tmp_path / "configs", catalog), profiles=tmp_path / "none")
    assert set(cat.hardware) == {"l4"} and set(cat.models) == {"tiny-llama"}


def test_bad_yaml_names_the_file(tmp_path: Path, catalog: Catalog) -> None:
    root = _mini_configs(tmp_path / "configs", catalog)
    bad = root / "hardware" / "broken.yaml"
    bad.write_text("- name: [unclosed\n  vendor: x\n")
    with pytest.raises(CatalogError, match="invalid YAML") as err:
        load_catalog(configs_dir=root, profiles=tmp_path / "none")
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("folder", ["hardware", "models"])
def test_unknown_field_names_the_file_and_field(tmp_path: Path, catalog: Catalog, folder: str) -> None:
    root = _mini_configs(tmp_path / "configs", catalog)
    path = next((root / folder).glob("*.yaml"))
    data = yaml.safe_load(path.read_text())
    entry = data[0] if isinstance(data, list) else data
    entry["tflops_typo"] = 1.0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match="tflops_typo") as err:
        load_catalog(configs_dir=root, profiles=tmp_path / "none")
    assert str(path) in str(err.value)


def test_duplicate_device_entry(tmp_path: Path, catalog: Catalog) -> None:
    root = _mini_configs(tmp_path / "configs", catalog)
    (root / "hardware" / "z_copy.yaml").write_text((root / "hardware" / "l4.yaml").read_text())
    with pytest.raises(CatalogError, match="duplicate entry 'l4'"):
        load_catalog(configs_dir=root, profiles=tmp_path / "none")


def _write_cluster(tmp_path: Path, devices: list[dict], **extra) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "devices": devices, **extra}))
    return path


def test_cluster_unknown_device_type(tmp_path: Path, catalog: Catalog) -> None:
    path = _write_cluster(tmp_path, [{"type": "no-such-gpu", "count": 1, "per_node": 1}])
    with pytest.raises(CatalogError, match="unknown device type 'no-such-gpu'"):
        load_cluster(path, catalog)


def test_cluster_unknown_device_type_names_the_file(tmp_path: Path, catalog: Catalog) -> None:
    path = _write_cluster(tmp_path, [{"type": "no-such-gpu", "count": 1, "per_node": 1}])
    with pytest.raises(CatalogError) as err:
        load_cluster(path, catalog)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "devices, extra, needle",
    [
        ([{"type": "l4", "count": 1, "per_node": 1, "gpus": 1}], {}, "gpus"),  # unknown pool field
        ([{"type": "l4", "count": 1, "per_node": 1}], {"region": "eu"}, "region"),  # unknown cluster field
        ([{"type": "l4", "count": 1, "per_node": 1, "pricing": "rented"}], {}, "pricing"),
        ([{"type": "l4", "count": 1, "per_node": 1}, {"type": "l4", "count": 2, "per_node": 1}], {}, "listed twice"),
        ([], {}, "devices"),
    ],
)
def test_bad_cluster_names_the_file(tmp_path: Path, catalog: Catalog, devices, extra, needle) -> None:
    path = _write_cluster(tmp_path, devices, **extra)
    with pytest.raises(CatalogError, match=needle) as err:
        load_cluster(path, catalog)
    assert str(path) in str(err.value)


def test_cluster_bad_yaml_and_missing_file(tmp_path: Path, catalog: Catalog) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndevices: [\n")
    with pytest.raises(CatalogError, match="invalid YAML") as err:
        load_cluster(bad, catalog)
    assert str(bad) in str(err.value)
    with pytest.raises(CatalogError, match="file not found"):
        load_cluster(tmp_path / "nope.yaml", catalog)
