"""Every config shipped in configs/ validates (docker/job.yaml: tests/test_docker.py)."""

from pathlib import Path

import pytest

from pipeline.batch.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.model.candidates()
    assert cfg.output.dir
