"""The code the nightly GPU run executes, run here on CPU: the gpu profiles with sizes shrunk, the hardware
requirement lifted and the hub dataset replaced by a local directory in the hub's format."""
import pytest

from impl import adapters
from impl.core.profiles import load_profile, override

SHRINK = dict(model={"n_layer": 1, "n_head": 2, "n_embd": 32, "context": 32},
              eval={"stride": 16, "max_tokens": 2000})


def shrunk(profile: str, local_dir, **train):
    spec = load_profile(profile).milestone("w01")
    return override(spec, data={"local_dir": str(local_dir)}, model=SHRINK["model"], eval=SHRINK["eval"],
                    train={"steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 1, **train})


@pytest.mark.gpu_smoke
def test_gpu1_path_wikitext_format_gpt2_tokenizer_bf16(wikitext_like_dir, tmp_runs):
    spec = shrunk("gpu1", wikitext_like_dir)
    assert spec.train.precision == "bf16" and spec.tokenizer.kind == "gpt2" and spec.data.source == "hub"
    m = adapters.w01_train(spec, tmp_runs).metrics
    assert m["world_size"] == 1 and m["params"] > 50257 * 32  # GPT-2's vocabulary in the tied embedding
    assert 0 < m["val_ppl"] < float("inf") and m["val_bpb"] > 0
    assert "wikitext-2-raw-v1" in m["data"] and "train/validation" in m["data"]


@pytest.mark.gpu_smoke
def test_gpu2_path_ddp_under_torchrun_and_its_parity_check(wikitext_like_dir, tmp_runs):
    spec = shrunk("gpu2", wikitext_like_dir)
    assert spec.train.nproc == 2
    m = adapters.w01_train(spec, tmp_runs).metrics
    assert m["world_size"] == 2 and m["val_ppl"] > 0
    spec = override(spec, ddp_parity={"steps": 2})
    r = adapters.w01_ddp_parity(spec, tmp_runs)
    assert spec.targets["ddp_max_param_diff"].passes(r["ddp_max_param_diff"])
    assert 0 < r["scaling_efficiency"]


def test_hub_source_without_a_hub_says_what_to_do(tmp_runs, monkeypatch):
    from impl.core.corpora import DataError

    import datasets.config
    import huggingface_hub.constants

    # the libraries read the environment at import, which an earlier test may have done: set their flags
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = override(load_profile("gpu1").milestone("w01"), data={"hub_path": "no-such-org/no-such-dataset"})
    with pytest.raises(DataError, match="local_dir"):
        adapters.w01_train(spec, tmp_runs)


def test_a_local_dir_without_the_split_files_is_a_clear_error(tmp_path, tmp_runs):
    from impl.core.corpora import DataError

    spec = shrunk("gpu1", tmp_path)
    with pytest.raises(DataError, match=r"no train-\*\.parquet"):
        adapters.w01_train(spec, tmp_runs)
