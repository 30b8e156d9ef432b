"""``python -m deploy.grafana [--check]``: write (or check) the chart's dashboard JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .dashboards import DASHBOARDS

OUT_DIR = Path(__file__).resolve().parents[1] / "helm" / "hetagent" / "files" / "dashboards"


def render() -> dict[str, str]:
    """Each dashboard's JSON text, keyed by file name; stable (sorted keys) so the committed copy diffs cleanly."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    out = {}
    for name, build in DASHBOARDS.items():
        dash = build().build()
        for i, panel in enumerate(dash.panels or [], start=1):  # Grafana wants each panel's id unique
            panel.id_val = i
        out[f"{name}.json"] = json.dumps(dash, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the dashboards' JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON there differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    if stale:
        print(f"stale (run python -m deploy.grafana): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
