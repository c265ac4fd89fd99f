"""The written interfaces (crs.protocols): every denoiser and dataset of crs implements them."""

import pytest
import torch

import crs
from crs.models import build_denoiser, load_denoiser
from crs.protocols import AnalyticDataset, Dataset, Denoiser
from crs.run.standins import build_tiny_pipeline


def test_every_denoiser_states_its_shape_range_and_space(tmp_path):
    gmm = crs.make_dataset("gmm")
    ldm = load_denoiser(str(build_tiny_pipeline(tmp_path / "ldm", "ldm", (3, 16, 16))))
    for den in (build_denoiser((2,)), build_denoiser((1, 8, 8)), ldm, gmm.denoiser):
        assert isinstance(den, Denoiser), den
        assert isinstance(den.is_latent, bool) and den.sigma_data > 0 and len(den.pixel_shape) == len(den.shape)
    assert gmm.denoiser.sigma_min is None and gmm.denoiser.shape == (2,)  # any range; the data space itself
    assert ldm.is_latent and ldm.pixel_shape == (3, 16, 16) and ldm.shape == (3, 8, 8) and ldm.sigma_min > 0
    x = torch.zeros(3, 2, dtype=torch.float64)
    torch.testing.assert_close(gmm.denoiser(x, 1.0), gmm.posterior_mean(x, 1.0), rtol=0, atol=0)  # same computation


def test_every_dataset_names_its_shape_and_samples(tmp_path):
    ldm = load_denoiser(str(build_tiny_pipeline(tmp_path / "ldm", "ldm", (3, 16, 16))))
    digits = crs.make_dataset("digits", resolution=16, channels=3)
    for data in (crs.make_dataset("gmm"), crs.make_dataset("gaussian"), digits, crs.models.model_space(digits, ldm)):
        assert isinstance(data, Dataset), data
        assert tuple(data.sample(2, torch.Generator().manual_seed(0)).shape) == (2, *data.shape)
    assert isinstance(crs.make_dataset("gmm"), AnalyticDataset) and not isinstance(digits, AnalyticDataset)
    assert crs.data.held_out("digits").split == "test" and crs.data.held_out("gmm").name == "gmm"


def test_check_data_matches_names_both_shapes():
    from crs.protocols import check_data_matches

    gmm = crs.make_dataset("gmm")
    check_data_matches(gmm.denoiser, gmm.shape)
    check_data_matches(lambda x, s: x, (5,))  # a plain callable declares no shape: not checked
    with pytest.raises(ValueError, match=r"The model takes samples of shape \(2,\), but the dataset gives \(3,\)\."):
        check_data_matches(gmm.denoiser, (3,))
