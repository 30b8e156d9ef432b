"""The GPU roofline against measured A100 kernel timings (Vidur): every row within bounds, and the roof that binds.

The medians and p90s are in tests/test_costmodel_check.py; here every single row (the old model, attention at the
GEMM efficiency under a hard max, had prefill rows at 0.68x).
"""

from costmodels.catalog import load_catalog
from costmodels.check import SHIPPED_PROFILES, check_rows, load_profile_rows


def test_every_a100_row_within_bounds_and_bound_as_measured():
    catalog = load_catalog()
    checked = check_rows(load_profile_rows(SHIPPED_PROFILES, catalog), catalog)
    assert len(checked) == 52  # 26 steps of Llama-2-7B / Llama-3-8B, 26 of the 70B models without attention
    for c in checked:
        assert 0.8 <= c.ratio <= 1.25, (c.row.model, c.row.group, c.row.size, c.ratio)
    # long prefills are compute-bound and decode steps memory-bound, as measured
    assert all(c.bound == "compute" for c in checked if c.row.phase == "prefill" and c.row.tokens == 4096)
    assert all(c.bound == "memory" for c in checked if c.row.phase == "decode")
