"""The import contracts of pyproject.toml ([tool.importlinter]) hold for the source, and
lint-imports fails, naming the chain, on a copy of it with one forbidden import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports run in ``cwd``: it reads the packages found there first."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_source_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_service_importing_another_services_internals_breaks_the_layers(
    tmp_path: Path,
) -> None:
    for package in ("services", "models", "bench"):
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=lambda _dir, names: [n for n in names if n.endswith((".pyc", ".parquet"))],
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    gateway_module = tmp_path / "services" / "gateway" / "auth.py"
    gateway_module.write_text(
        gateway_module.read_text() + "\nfrom services.rendezvous import mailbox  # noqa\n"
    )
    common_module = tmp_path / "services" / "common" / "clock.py"
    common_module.write_text(common_module.read_text() + "\nimport services.cli.main  # noqa\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "services.gateway is not allowed to import services.rendezvous" in result.stdout
    assert "services.gateway.auth -> services.rendezvous.mailbox" in result.stdout
    assert "services.common.clock -> services.cli.main" in result.stdout
