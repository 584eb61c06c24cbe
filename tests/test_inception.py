"""The Flax FID Inception against pytorch-fid's, built from its block
classes with random weights (its downloader is never called), and the
weights file's error paths."""

import numpy as np
import pytest

import jax

from ddpm_jax.interop import inception_weights
from ddpm_jax.models import inception
from tests.reference_models import assert_close

# (name, pytorch-fid block factory arguments): the blocks that the FID graph
# replaces in torchvision's Inception-v3.
FID_BLOCKS = (("Mixed_5b", "FIDInceptionA", (192, 32)),
              ("Mixed_5c", "FIDInceptionA", (256, 64)),
              ("Mixed_5d", "FIDInceptionA", (288, 64)),
              ("Mixed_6b", "FIDInceptionC", (768, 128)),
              ("Mixed_6c", "FIDInceptionC", (768, 160)),
              ("Mixed_6d", "FIDInceptionC", (768, 160)),
              ("Mixed_6e", "FIDInceptionC", (768, 192)),
              ("Mixed_7b", "FIDInceptionE_1", (1280,)),
              ("Mixed_7c", "FIDInceptionE_2", (2048,)))


@pytest.fixture(scope="module")
def reference(torch):
  """(pytorch-fid InceptionV3 returning pool3, its fc, state dict) with
  random weights; BatchNorm statistics calibrated on a random batch so that
  activations stay O(1) through all the layers."""
  pfi = pytest.importorskip("pytorch_fid.inception")
  torch.manual_seed(0)
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  for name, cls, args in FID_BLOCKS:
    setattr(net, name, getattr(pfi, cls)(*args))
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.momentum = 1.0  # running stats := the calibration batch's
  original = pfi.fid_inception_v3
  pfi.fid_inception_v3 = lambda: net  # the wrapper without the download
  try:
    wrapper = pfi.InceptionV3([3], resize_input=True, normalize_input=True)
  finally:
    pfi.fid_inception_v3 = original
  wrapper.train()
  with torch.no_grad():
    wrapper(torch.rand(4, 3, 37, 37, generator=torch.Generator().manual_seed(1)))
  wrapper.eval()
  state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
  return wrapper, net.fc, state


def test_pool3_features_and_logits_match_pytorch_fid(torch, reference):
  wrapper, fc, state = reference
  images = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(
      np.float32)
  with torch.no_grad():
    pool3 = wrapper(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0]
    pool3 = pool3.reshape(2, -1)
    logits = fc(pool3).numpy()
  pool3 = pool3.numpy()
  params = inception_weights.params_from_state_dict(state)
  feats, got_logits = jax.jit(inception.FIDInception().apply)(
      {"params": params}, images)
  assert pool3.shape == (2, inception.FEATURE_DIM)
  assert float(np.std(pool3)) > 0.05  # activations did not die out
  # 1e-4 relative to the features' scale: the two compute ~100 layers of
  # float32 convolutions in different orders.
  assert_close(feats, pool3, rtol=1e-4, atol=1e-4 * float(np.abs(pool3).max()))
  assert_close(got_logits, logits, rtol=1e-4,
               atol=1e-4 * float(np.abs(logits).max()))


def test_bilinear_resize_is_pytorchs(torch):
  x = np.random.default_rng(3).normal(size=(1, 7, 5, 2)).astype(np.float32)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(11, 11),
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  got = inception.resize_bilinear(x, 11)
  assert_close(got, want, rtol=1e-6, atol=1e-6)
  # Downsizing, no antialiasing (as PyTorch without antialias=True).
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(3, 3),
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  assert_close(inception.resize_bilinear(x, 3), want, rtol=1e-6, atol=1e-6)


def test_weights_convert_to_safetensors_and_back(torch, reference, tmp_path):
  _, _, state = reference
  pth = str(tmp_path / "pt_inception.pth")
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  out = inception_weights.convert(pth, str(tmp_path / "w.safetensors"))
  a = inception_weights.load_params(out)
  b = inception_weights.params_from_state_dict(state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  with pytest.raises(FileExistsError, match="exists"):
    inception_weights.convert(pth, out)
  assert inception_weights.main(["--pth", pth, "--out", out]) == 1


def test_weights_errors(torch, reference, tmp_path):
  _, _, state = reference
  with pytest.raises(FileNotFoundError, match="download .*fid_weights"):
    inception_weights.load_params(str(tmp_path / "none.safetensors"))
  partial = dict(state)
  del partial["Mixed_6b.branch1x1.conv.weight"]
  with pytest.raises(inception_weights.WeightsError,
                     match="lack Mixed_6b/branch1x1/conv/kernel"):
    inception_weights.params_from_state_dict(partial)
  wrong = dict(state)
  wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's
  with pytest.raises(inception_weights.WeightsError, match="fc/kernel"):
    inception_weights.params_from_state_dict(wrong)
  pickled = str(tmp_path / "model.pth")
  torch.save({"net": torch.nn.Linear(2, 2)}, pickled)  # a pickled module
  with pytest.raises(inception_weights.WeightsError,
                     match="not a plain PyTorch state dict"):
    inception_weights.read_state_dict(pickled)
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"not safetensors")
  with pytest.raises(inception_weights.WeightsError, match="safetensors"):
    inception_weights.read_state_dict(str(bad))


@pytest.fixture(scope="module")
def random_params():
  return jax.jit(inception.FIDInception().init)(
      jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]


@pytest.mark.slow
def test_inception_outputs_batches_tiles_and_checks(random_params):
  from ddpm_jax.evaluators import fid, metrics
  params = random_params
  gray = np.random.default_rng(4).uniform(-1, 1, size=(4, 16, 16, 1))
  feats, logits = fid.inception_outputs(params, gray, batch_size=2)
  # Other rows in the batch, RGB given: the same features.
  rgb = np.repeat(gray[[3, 0]], 3, -1)
  again, _ = fid.inception_outputs(params, rgb, batch_size=2)
  assert feats.shape == (4, 2048) and logits.shape == (4, 1008)
  assert_close(again, feats[[3, 0]], rtol=1e-5, atol=1e-6)
  assert_close(logits, feats @ np.asarray(params["fc"]["kernel"], np.float64),
               rtol=1e-4, atol=1e-5)
  with pytest.raises(metrics.MetricsError, match=r"x / 127.5 - 1"):
    fid.check_images(np.full((2, 8, 8, 3), 200.0))
  with pytest.raises(metrics.MetricsError, match="uint8"):
    fid.check_images(np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(metrics.MetricsError, match=r"\[N, H, W, 3\]"):
    fid.check_images(np.zeros((2, 8, 8)))


@pytest.mark.slow
def test_dataset_statistics_are_computed_once_and_cached(random_params,
                                                         tmp_path,
                                                         monkeypatch):
  from configs import digits
  from ddpm_jax import data
  from ddpm_jax.evaluators import fid, metrics
  config = digits.get_config()
  mu, sigma = fid.dataset_statistics(config, "test", random_params, limit=4,
                                     batch_size=2, cache_dir=str(tmp_path))
  feats, _ = fid.inception_outputs(random_params,
                                   data.digits_images("test")[:4], 2)
  want_mu, want_sigma = metrics.feature_statistics(feats)
  assert_close(mu, want_mu, rtol=1e-6, atol=1e-9)
  assert_close(sigma, want_sigma, rtol=1e-6, atol=1e-9)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "fid_stats_digits_test_8px_4.npz"]
  monkeypatch.setattr(fid, "inception_outputs", None)  # must not be called
  again = fid.dataset_statistics(config, "test", random_params, limit=4,
                                 cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again[1], sigma)


@pytest.mark.slow
def test_fid_score_of_a_model_end_to_end(random_params, tmp_path,
                                         monkeypatch):
  """sample_quality.score with metric 'fid' (random Inception weights):
  FID, IS and precision/recall of the samples against the cached
  reference statistics and features, and the same FID from a precomputed
  statistics file."""
  from ddpm_jax import from_config, train
  from ddpm_jax.evaluators import fid, metrics, sample_quality
  from ddpm_jax.samplers import generate
  from tests.tiny_configs import tiny_digits_config
  monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(inception_weights, "load_params",
                      lambda path="": random_params)
  config = tiny_digits_config(num_timesteps=5, batch_size=8, one_level=True)
  model = from_config.make_model(config)
  params = train.create_train_state(
      config, model, from_config.make_optimizer(config)).ema_params
  result = sample_quality.score(config, model, params, "fid", 10, seed=3,
                                batch_size=10, reference_split="test",
                                reference_num=10, precision_recall=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "fid_feats_digits_test_8px_10.npz", "fid_stats_digits_test_8px_10.npz"]
  x = generate.generate(config, model, params, 10, 10, 3)
  feats, logits = fid.inception_outputs(random_params, x)
  reference = metrics.load_statistics(
      str(tmp_path / "fid_stats_digits_test_8px_10.npz"))
  assert result["fid"] == pytest.approx(
      fid.fid_of_features(feats, reference), rel=1e-9)
  assert result["inception_score"] == pytest.approx(
      fid.inception_score_of_logits(logits)[0], rel=1e-9)
  real = fid.dataset_features(config, "test", random_params, 10)
  assert (result["precision"], result["recall"]) == metrics.precision_recall(
      real, feats)
  again = sample_quality.score(
      config, model, params, "fid", 10, seed=3, batch_size=10,
      reference_stats=str(tmp_path / "fid_stats_digits_test_8px_10.npz"))
  assert again["fid"] == pytest.approx(result["fid"], rel=1e-9)
  # Statistics of another feature layer are refused before any sampling
  # (FID-50k would sample for hours first).
  bad = str(tmp_path / "small.npz")
  metrics.save_statistics(bad, np.zeros(3), np.eye(3))

  def no_sampling(*args, **kwargs):
    raise AssertionError("sampled before the statistics were checked")

  monkeypatch.setattr(generate, "generate", no_sampling)
  with pytest.raises(metrics.MetricsError,
                     match=f"{bad}: statistics of 3 features, not the FID "
                           r"Inception's 2048 \(pool3\): compare statistics "
                           "of the same feature layer"):
    sample_quality.score(config, model, params, "fid", 10,
                         reference_stats=bad)
