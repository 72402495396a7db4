import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specnet_zoo.cli import main
from specnet_zoo.reproduce.info_preservation import max_pool_error, measure, spectral_pool_error


def test_errors_on_a_synthetic_image():
    smooth = torch.linspace(0, 1, 64, dtype=torch.float64)
    image = (smooth[:, None] * smooth[None, :])[None]
    assert spectral_pool_error(image, 1.0) == (1.0, pytest.approx(0.0, abs=1e-12))
    fraction, error = max_pool_error(image, 2)
    assert fraction == 0.25 and 0 < error < 0.1
    constant = torch.full((1, 30, 20), 0.5, dtype=torch.float64)
    assert max_pool_error(constant, 3)[1] == pytest.approx(0.0, abs=1e-12)
    assert spectral_pool_error(constant, 0.1)[1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.shared_data
def test_spectral_pooling_keeps_more_information_than_max_pooling(photos):
    result = measure(photos[:4], scales=(0.1, 0.2, 0.3, 0.5, 0.7, 1.0), strides=(2, 3, 4))
    errors = [e for _, _, e in result.spectral]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12  # monotone, exact at full size
    for stride, fraction, error in result.max_pool:
        assert result.spectral_error_at(fraction) < 0.6 * error, stride  # Rippel Fig. 4a: far lower error


@pytest.mark.shared_data
def test_cli_writes_csv_and_png(photos, shared_data, tmp_path, capsys):
    assert main(["reproduce", "info-preservation", "--photos", str(shared_data / "photos"), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "info_preservation.csv")))
    assert {r["method"] for r in rows} == {"spectral_pool", "max_pool"}
    assert (tmp_path / "info_preservation.png").stat().st_size > 10_000
    assert "spectral kept for same err" in capsys.readouterr().out


def test_cli_reports_missing_folder(tmp_path, capsys):
    assert main(["reproduce", "info-preservation", "--photos", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("specnet-zoo ")
    exe = Path(sys.executable).with_name("specnet-zoo")
    assert exe.exists(), f"console script missing next to {sys.executable}"
