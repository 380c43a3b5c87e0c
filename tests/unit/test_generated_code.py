"""services/shoal/v1 must be exactly what the protos generate: it is never edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
GEN_DIR = ROOT / "services" / "shoal" / "v1"
IGNORED = {"__init__.py"}


def _generated_files(root: Path) -> dict[str, bytes]:
    """Map each generated file's name to its content, leaving out caches and the package marker."""
    return {
        path.name: path.read_bytes()
        for path in sorted(root.iterdir())
        if path.is_file() and path.name not in IGNORED and not path.name.endswith((".pyc", ".pyo"))
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (PROTO_DIR / "shoal" / "v1").glob("*.proto"))
    assert protos, f"no .proto files under {PROTO_DIR}"
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    assert plugin.exists(), f"{plugin} missing: install the dev extras (make venv)"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out=quiet:{tmp_path}",
            f"--plugin=protoc-gen-mypy={plugin}",
            *protos,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"

    fresh = _generated_files(tmp_path / "shoal" / "v1")
    committed = _generated_files(GEN_DIR)
    hint = "services/shoal/v1 is out of date with protos/: run `make proto` and commit the result"
    assert sorted(committed) == sorted(fresh), f"{hint} (files differ: {sorted(set(committed) ^ set(fresh))})"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"{hint} (stale: {', '.join(stale)})"
    assert (GEN_DIR / "__init__.py").exists(), f"{GEN_DIR}/__init__.py missing: run `make proto`"
