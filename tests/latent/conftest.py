"""Fixtures of the latent-path tests: one tiny random VAE folder and one small image folder per module."""

import pytest
from latent_testkit import image_folder, tiny_vae_folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return tiny_vae_folder(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("imgs") / "train")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread, as the other CPU tests (see the root conftest)."""
