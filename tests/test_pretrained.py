"""Pretrained tags resolve through open_clip's registry to the Hugging Face cache; only the network is mocked.

The HTTP layer of huggingface_hub (its httpx client) is replaced by a transport that serves bytes held
here, or fails like an unreachable network. huggingface_hub itself, its cache layout and open_clip's
registry are real; the cache lives in tmp_path. Works with every huggingface_hub that pyproject.toml
allows (>= 1.0, where ``set_client_factory`` appeared): 1.x runs on httpx, 2.x on httpx2.
"""

import hashlib
import importlib

import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("open_clip")

from huggingface_hub import constants  # noqa: E402
from huggingface_hub.errors import HTTPError as _HubHTTPError  # noqa: E402

# the HTTP library this huggingface_hub is built on: the package its base HTTP error comes from
httpx = importlib.import_module(_HubHTTPError.__module__.partition(".")[0])
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook  # noqa: E402

from pixdex.encoders.encoder import load_encoder  # noqa: E402
from pixdex.encoders.pretrained import cached_tags, hf_location, pretrained_cfg, resolve_pretrained  # noqa: E402
from pixdex.encoders.registry import describe_models, get_config  # noqa: E402
from pixdex.encoders.spec import resolve_spec  # noqa: E402
from pixdex.errors import PixdexError  # noqa: E402

PAYLOAD = b"\x00weights\xff" * 1000


class Hub:
    """A fake huggingface.co: ``files`` maps 'repo/filename' to bytes; ``down`` makes every request fail."""

    def __init__(self):
        self.files = {}
        self.down = False
        self.requests = []

    def __call__(self, request):
        path = request.url.path
        if "/resolve/" in path:
            self.requests.append((request.method, path))
        if self.down:
            raise httpx.ConnectError("network is unreachable", request=request)
        if "/resolve/" not in path:
            return httpx.Response(404)
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        filename = rest.split("/", 1)[1]
        data = self.files.get(f"{repo}/{filename}")
        if data is None:
            return httpx.Response(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": "b" * 40})
        headers = {
            "X-Repo-Commit": "a" * 40,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Length": str(len(data)),
        }
        return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else data)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these variables once, at import: point the already-imported constants there too
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake = Hub()
    huggingface_hub.set_client_factory(
        lambda: httpx.Client(
            transport=httpx.MockTransport(fake),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
        )
    )
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)


def _go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_download_then_offline_from_cache(hub, monkeypatch):
    cfg = get_config("ViT-B-32")
    repo, names = hf_location(pretrained_cfg(cfg, "openai"))
    assert names[0] == "open_clip_model.safetensors"
    hub.files[f"{repo}/open_clip_model.safetensors"] = PAYLOAD
    tuned, path = resolve_pretrained(cfg, "openai")
    assert path.read_bytes() == PAYLOAD and str(path).startswith(constants.HF_HUB_CACHE)
    # open_clip's OpenAI weights were trained with QuickGELU: the config follows the tag
    assert cfg.vision.act == "gelu" and tuned.vision.act == tuned.text.act == "quick_gelu"
    assert "openai" in cached_tags(cfg)
    row = next(r for r in describe_models() if r["name"] == "ViT-B-32")
    assert "openai" in row["cached"] and "openai" in row["pretrained"]
    # offline now: the cached file is found without any request
    _go_offline(monkeypatch)
    n = len(hub.requests)
    resolved = resolve_spec("ViT-B-32:openai")
    assert resolved.weights == path and resolved.spec == "ViT-B-32:openai" and len(hub.requests) == n


def test_falls_back_to_the_torch_file(hub):
    cfg = get_config("ViT-B-32-256")
    repo, _ = hf_location(pretrained_cfg(cfg, "datacomp_s34b_b86k"))
    hub.files[f"{repo}/open_clip_pytorch_model.bin"] = PAYLOAD
    _, path = resolve_pretrained(cfg, "datacomp_s34b_b86k")
    assert path.name == "open_clip_pytorch_model.bin" and path.read_bytes() == PAYLOAD
    assert [p for m, p in hub.requests if p.endswith(".safetensors")]  # safetensors was asked for first


def test_unreachable_network_is_one_clear_error(hub):
    hub.down = True
    with pytest.raises(PixdexError) as e:
        load_encoder("ViT-B-32-256", device="cpu")  # the default tag of the default model
    msg = str(e.value)
    assert "ViT-B-32-256:datacomp_s34b_b86k" in msg
    assert "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K/open_clip_model.safetensors" in msg
    assert "--checkpoint" in msg and "\n" not in msg
    assert hub.requests  # it did try the network


def test_offline_without_cache_makes_no_request(hub, monkeypatch):
    _go_offline(monkeypatch)
    with pytest.raises(PixdexError, match=r"RN50:openai.*HF_HUB_OFFLINE.*--checkpoint"):
        load_encoder("RN50:openai", device="cpu")
    assert hub.requests == []


def test_unknown_tag_lists_known_tags(hub):
    with pytest.raises(
        PixdexError, match="unknown pretrained tag 'nope' for ViT-B-32-256; known tags: datacomp"
    ):
        load_encoder("ViT-B-32-256:nope")
    with pytest.raises(PixdexError, match="unknown model 'ViT-Z-99'"):
        load_encoder("ViT-Z-99")


def test_repo_without_the_files(hub):
    with pytest.raises(
        PixdexError, match="has none of open_clip_model.safetensors, open_clip_pytorch_model.bin"
    ):
        resolve_pretrained(get_config("ViT-B-16"), "laion2b_s34b_b88k")
    assert len(hub.requests) == 2  # one metadata request per candidate, no retries
