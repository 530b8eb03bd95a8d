"""Weights: registry look-up, checked downloads (file://, local HTTP, Google Drive's confirmation
step), safe loading of each checkpoint format into the backbone."""

import hashlib
import os
import pickle
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from geoloc.cli import main
from geoloc.errors import GeolocError
from geoloc.model.network import BACKBONES, build_model, load_model, save_model
from geoloc.model.weights import fetch, load_state_dict, lookup, sha256_file, verify_weights

REGISTRY = Path(__file__).resolve().parents[2] / "resources" / "weights.yaml"
PAYLOAD = bytes(range(256)) * 64  # 16 KiB that stand for a weights file
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _entry(url, sha256=PAYLOAD_SHA, size=len(PAYLOAD), fmt="torchvision"):
    return {"url": url, "sha256": sha256, "size": size, "format": fmt}


def _leftovers(folder: Path, keep: Path | None = None) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != keep)


# ---------------------------------------------------------------- local HTTP server


class _Site:
    """Routes path -> list of responders (the last one repeats) and the requests seen."""

    def __init__(self):
        self.routes = {}
        self.requests: list[str] = []
        self.url = ""


def _send(data: bytes, content_type="application/octet-stream", headers=()):
    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    return respond


def _send_truncated(data: bytes):
    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.close_connection = True

    return respond


@pytest.fixture
def site():
    state = _Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            responders = state.routes.get(urllib.parse.urlsplit(self.path).path)
            if not responders:
                self.send_error(404)
                return
            (responders.pop(0) if len(responders) > 1 else responders[0])(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


# ---------------------------------------------------------------- fetch


def test_fetch_from_file_url_places_the_checked_file(tmp_path):
    source = tmp_path / "src.pth"
    source.write_bytes(PAYLOAD)
    out = tmp_path / "weights" / "w.pth"
    assert fetch(_entry(source.as_uri()), out) == PAYLOAD_SHA
    assert out.read_bytes() == PAYLOAD
    assert _leftovers(out.parent) == ["w.pth"]


def test_fetch_over_http_places_the_checked_file(site, tmp_path):
    site.routes["/w.pth"] = [_send(PAYLOAD)]
    out = tmp_path / "w.pth"
    assert fetch(_entry(f"{site.url}/w.pth"), out, retries=0) == PAYLOAD_SHA
    assert out.read_bytes() == PAYLOAD
    assert site.requests == ["/w.pth"]


def test_file_in_place_with_the_right_hash_is_not_downloaded_again(site, tmp_path):
    site.routes["/w.pth"] = [_send(PAYLOAD)]
    out = tmp_path / "w.pth"
    out.write_bytes(PAYLOAD)  # e.g. put there by hand
    assert fetch(_entry(f"{site.url}/w.pth"), out) == PAYLOAD_SHA
    assert site.requests == []


def test_file_in_place_with_a_wrong_hash_is_replaced(site, tmp_path):
    site.routes["/w.pth"] = [_send(PAYLOAD)]
    out = tmp_path / "w.pth"
    out.write_bytes(b"stale")
    fetch(_entry(f"{site.url}/w.pth"), out, retries=0)
    assert out.read_bytes() == PAYLOAD
    assert site.requests == ["/w.pth"]


def test_wrong_hash_deletes_the_download_and_shows_both_hashes(site, tmp_path):
    site.routes["/w.pth"] = [_send(PAYLOAD)]
    expected = "0" * 64
    out = tmp_path / "w.pth"
    with pytest.raises(GeolocError) as error:
        fetch(_entry(f"{site.url}/w.pth", sha256=expected), out, retries=0)
    assert expected in str(error.value) and PAYLOAD_SHA in str(error.value)
    assert _leftovers(tmp_path) == []


def test_a_published_hash_prefix_is_checked_as_a_prefix(tmp_path):
    source = tmp_path / "src.pth"
    source.write_bytes(PAYLOAD)
    assert fetch(_entry(source.as_uri(), sha256=PAYLOAD_SHA[:8]), tmp_path / "ok.pth") == PAYLOAD_SHA
    wrong_prefix = ("f" if PAYLOAD_SHA[0] != "f" else "e") + PAYLOAD_SHA[1:8]
    with pytest.raises(GeolocError, match=f"expected {wrong_prefix}, got {PAYLOAD_SHA}"):
        fetch(_entry(source.as_uri(), sha256=wrong_prefix), tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


def test_unpinned_hash_accepts_the_download_and_reports_its_hash(tmp_path, caplog):
    source = tmp_path / "src.pth"
    source.write_bytes(PAYLOAD)
    assert fetch(_entry(source.as_uri(), sha256=None, size=None), tmp_path / "w.pth") == PAYLOAD_SHA
    assert PAYLOAD_SHA in caplog.text


def test_truncated_download_is_retried_then_fails_clearly(site, tmp_path):
    site.routes["/w.pth"] = [_send_truncated(PAYLOAD)]
    out = tmp_path / "w.pth"
    with pytest.raises(GeolocError, match="failed after 3 attempts"):
        fetch(_entry(f"{site.url}/w.pth", sha256=None, size=None), out, retries=2, backoff_seconds=0)
    assert len(site.requests) == 3
    assert _leftovers(tmp_path) == []


def test_truncated_download_succeeds_on_retry(site, tmp_path):
    site.routes["/w.pth"] = [_send_truncated(PAYLOAD), _send(PAYLOAD)]
    out = tmp_path / "w.pth"
    assert fetch(_entry(f"{site.url}/w.pth"), out, retries=1, backoff_seconds=0) == PAYLOAD_SHA
    assert out.read_bytes() == PAYLOAD
    assert len(site.requests) == 2


def test_download_shorter_than_the_registered_size_counts_as_truncated(site, tmp_path):
    site.routes["/w.pth"] = [_send(PAYLOAD)]
    with pytest.raises(GeolocError, match=f"received {len(PAYLOAD)} of {len(PAYLOAD) + 1} bytes"):
        fetch(
            _entry(f"{site.url}/w.pth", sha256=None, size=len(PAYLOAD) + 1),
            tmp_path / "w.pth",
            retries=1,
            backoff_seconds=0,
        )
    assert len(site.requests) == 2


def test_missing_file_on_the_server_is_not_retried(site, tmp_path):
    with pytest.raises(GeolocError, match="HTTP 404"):
        fetch(_entry(f"{site.url}/gone.pth"), tmp_path / "w.pth", retries=3, backoff_seconds=0)
    assert site.requests == ["/gone.pth"]


def test_google_drive_confirmation_form_is_followed(site, tmp_path):
    # The drive.usercontent.google.com form of the "cannot scan for viruses" page.
    page = f"""<html><body>Google Drive can't scan this file for viruses.
      <form id="download-form" action="{site.url}/download" method="get">
        <input type="submit" id="uc-download-link" value="Download anyway"/>
        <input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">
        <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">
      </form></body></html>""".encode()
    site.routes["/uc"] = [_send(page, content_type="text/html; charset=utf-8")]
    site.routes["/download"] = [_send(PAYLOAD)]
    out = tmp_path / "w.pth"
    assert fetch(_entry(f"{site.url}/uc?export=download&id=FILEID"), out, retries=0) == PAYLOAD_SHA
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(site.requests[1]).query))
    assert query == {"id": "FILEID", "export": "download", "confirm": "t", "uuid": "u-1"}


def test_google_drive_download_warning_cookie_is_followed(site, tmp_path):
    # The older form: a cookie carries the confirmation token.
    page = b"<html><body>Too large to scan</body></html>"

    def drive(handler):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
        if query.get("confirm") == "TOKEN7":
            _send(PAYLOAD)(handler)
        else:
            _send(page, "text/html", headers=[("Set-Cookie", "download_warning_13058=TOKEN7; Path=/")])(handler)

    site.routes["/uc"] = [drive]
    out = tmp_path / "w.pth"
    assert fetch(_entry(f"{site.url}/uc?export=download&id=X"), out, retries=0) == PAYLOAD_SHA
    assert len(site.requests) == 2 and "confirm=TOKEN7" in site.requests[1]


def test_web_page_instead_of_the_file_explains_the_manual_fallback(site, tmp_path):
    site.routes["/uc"] = [_send(b"<html>Quota exceeded</html>", "text/html")]
    out = tmp_path / "w.pth"
    with pytest.raises(GeolocError, match=f"web page instead of the file.*put it at {re.escape(str(out))}"):
        fetch(_entry(f"{site.url}/uc?id=X"), out, retries=2, backoff_seconds=0)
    assert len(site.requests) == 1
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- registry


def _write_registry(path: Path, content) -> Path:
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def test_lookup_returns_the_entry(tmp_path):
    registry = _write_registry(tmp_path / "w.yaml", {"resnet18": {"imagenet": _entry("file:///w.pth")}})
    assert lookup(registry, "resnet18", "imagenet") == _entry("file:///w.pth")


def test_lookup_names_what_is_missing_and_what_is_known(tmp_path):
    registry = _write_registry(
        tmp_path / "w.yaml", {"resnet18": {"imagenet": _entry("file:///a"), "places365": _entry("file:///b")}}
    )
    with pytest.raises(GeolocError, match="no pretraining 'gldv2' for resnet18.*imagenet, places365"):
        lookup(registry, "resnet18", "gldv2")
    with pytest.raises(GeolocError, match="no backbone 'vgg16'.*resnet18"):
        lookup(registry, "vgg16", "imagenet")
    with pytest.raises(GeolocError, match="random initialisation"):
        lookup(registry, "resnet18", "none")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sha256", "F37072FD", "sha256 must be null or 8 to 64 lowercase hex"),
        ("sha256", "abc", "sha256 must be null or 8 to 64 lowercase hex"),
        ("size", -5, "size must be null or a positive number"),
        ("format", "onnx", "format must be one of torchvision, places365, gldv2, timm"),
        ("url", "ftp://host/w.pth", "url must be an http"),
    ],
)
def test_lookup_refuses_a_bad_field_naming_it(tmp_path, field, value, message):
    entry = {**_entry("file:///w.pth"), field: value}
    registry = _write_registry(tmp_path / "w.yaml", {"resnet18": {"imagenet": entry}})
    with pytest.raises(GeolocError, match=f"resnet18.imagenet.{message}"):
        lookup(registry, "resnet18", "imagenet")


def test_project_registry_covers_the_study_with_torchvision_hash_prefixes():
    for backbone in BACKBONES:
        entry = lookup(REGISTRY, backbone, "imagenet")
        assert entry["format"] == "torchvision"
        # torchvision names its files <name>-<first 8 hex digits of the sha256>.pth
        published_prefix = re.search(r"-([0-9a-f]{8})\.pth$", entry["url"]).group(1)
        assert entry["sha256"].startswith(published_prefix), backbone
    assert lookup(REGISTRY, "resnet18", "places365")["format"] == "places365"
    assert lookup(REGISTRY, "resnet18", "gldv2")["format"] == "gldv2"
    for pretraining in ("places365", "gldv2"):
        assert "drive.google.com" in lookup(REGISTRY, "resnet18", pretraining)["url"]
    assert lookup(REGISTRY, "timm:resnet10t", "imagenet")["format"] == "timm"


def test_a_users_registry_adds_to_the_shipped_one(tmp_path, capsys):
    source = tmp_path / "src.pth"
    source.write_bytes(PAYLOAD)
    mine = _write_registry(
        tmp_path / "mine.yaml",
        {
            "resnet18": {"mine": _entry(source.as_uri())},  # a pretraining added beside the shipped ones
            "timm:vit_base_patch14_dinov2": {"lvd142m": _entry(source.as_uri(), fmt="timm")},  # replaced
        },
    )
    assert lookup([REGISTRY, mine], "resnet18", "mine")["url"] == source.as_uri()
    assert lookup([REGISTRY, mine], "resnet18", "imagenet") == lookup(REGISTRY, "resnet18", "imagenet")
    assert lookup([REGISTRY, mine], "timm:vit_base_patch14_dinov2", "lvd142m")["sha256"] == PAYLOAD_SHA
    with pytest.raises(GeolocError, match="has no backbone 'swin_tiny'"):
        lookup(mine, "swin_tiny", "imagenet")  # alone, the user's file knows only its own entries
    out = tmp_path / "w.pth"
    assert (
        main(
            [
                "fetch-weights",
                "--registry",
                str(REGISTRY),
                "--registry",
                str(mine),
                "--backbone",
                "resnet18",
                "--pretraining",
                "mine",
                "--out",
                str(out),
                "--retries",
                "0",
            ]
        )
        == 0
    )
    assert out.read_bytes() == PAYLOAD


def test_project_registry_has_dinov2_small_and_base_with_and_without_registers():
    for model in (
        "vit_small_patch14_dinov2",
        "vit_base_patch14_dinov2",
        "vit_small_patch14_reg4_dinov2",
        "vit_base_patch14_reg4_dinov2",
    ):
        entry = lookup(REGISTRY, f"timm:{model}", "lvd142m")
        assert entry["format"] == "timm"
        assert entry["url"] == f"https://huggingface.co/timm/{model}.lvd142m/resolve/main/model.safetensors"


def test_project_registry_urls_match_the_installed_torchvision():
    weights = {
        "resnet18": torchvision.models.ResNet18_Weights,
        "swin_tiny": torchvision.models.Swin_T_Weights,
        "efficientnet_v2_s": torchvision.models.EfficientNet_V2_S_Weights,
        "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights,
    }
    for backbone, enum in weights.items():
        assert lookup(REGISTRY, backbone, "imagenet")["url"] == enum.IMAGENET1K_V1.url


def test_fetch_weights_command_prints_the_hash(tmp_path, capsys):
    source = tmp_path / "src.pth"
    source.write_bytes(PAYLOAD)
    registry = _write_registry(tmp_path / "w.yaml", {"resnet18": {"imagenet": _entry(source.as_uri())}})
    out = tmp_path / "weights" / "resnet18-imagenet.pth"
    argv = [
        "fetch-weights",
        "--registry",
        str(registry),
        "--backbone",
        "resnet18",
        "--pretraining",
        "imagenet",
        "--out",
        str(out),
        "--retries",
        "0",
    ]
    assert main(argv) == 0
    assert PAYLOAD_SHA in capsys.readouterr().out
    assert out.read_bytes() == PAYLOAD
    assert main([*argv[:4], "convnext_tiny", *argv[5:]]) == 2
    assert "no backbone 'convnext_tiny'" in capsys.readouterr().err


# ---------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _assert_backbone_holds(model, state: dict):
    backbone = model.backbone.state_dict()
    assert backbone, "empty backbone"
    for key, value in backbone.items():
        assert torch.equal(value, state[key]), key


def test_places365_checkpoint_loads_into_the_backbone(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.resnet18(num_classes=365).state_dict()
    path = tmp_path / "places.pth"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = build_model("resnet18", 16, weights=path, weights_format="places365")
    _assert_backbone_holds(model, state)


def test_gldv2_checkpoint_loads_into_the_backbone(tmp_path):
    torch.manual_seed(3)
    state = torchvision.models.resnet18(num_classes=512).state_dict()
    path = tmp_path / "gldv2.pth"
    torch.save(state, path)
    model = build_model("resnet18", 16, weights=path, weights_format="gldv2")
    _assert_backbone_holds(model, state)


def test_torchvision_checkpoint_loads_into_the_backbone(tmp_path):
    torch.manual_seed(4)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    path = tmp_path / "mnv3.pth"
    torch.save(state, path)
    model = build_model("mobilenet_v3_small", 16, weights=path)  # torchvision is the default format
    _assert_backbone_holds(model, state)
    assert not any(
        k.startswith("classifier.") for k in load_state_dict(path, "torchvision", drop_prefixes=("classifier.",))
    )


@pytest.mark.parametrize(
    "model_name, head, as_safetensors",
    [("resnet10t", "fc.", False), ("resnet10t", "fc.", True), ("vit_tiny_patch16_224", "head.", True)],
)
def test_timm_checkpoint_loads_into_the_backbone(tmp_path, model_name, head, as_safetensors):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model(model_name).state_dict()  # as timm's hub files hold them
    path = tmp_path / "timm.pth"  # the workflow names every weights file .pth
    if as_safetensors:
        save_file(state, path)
    else:
        torch.save(state, path)
    model = build_model(f"timm:{model_name}", 16, weights=path)
    loaded = {k.removeprefix("body."): v for k, v in model.backbone.state_dict().items()}
    assert set(loaded) == {k for k in state if not k.startswith(head)}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_places365_checkpoint_missing_a_layer_is_refused_naming_it(tmp_path, resnet18_state):
    state = {f"module.{k}": v for k, v in resnet18_state.items() if k != "layer3.0.conv1.weight"}
    path = tmp_path / "places.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(GeolocError, match=r"missing keys: layer3\.0\.conv1\.weight"):
        build_model("resnet18", 16, weights=path, weights_format="places365")


def test_checkpoint_with_a_wrong_shape_is_refused_naming_it(tmp_path, resnet18_state):
    path = tmp_path / "w.pth"
    torch.save({**resnet18_state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(GeolocError, match=r"wrong shapes: conv1\.weight \(64, 3, 3, 3\)"):
        build_model("resnet18", 16, weights=path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(GeolocError, match="does not fit the network; missing keys: conv1.weight.*unknown keys"):
        build_model("resnet18", 16, weights=path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path, resnet18_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**resnet18_state, "fc.weight": _Exploit(marker)}, path)
    with pytest.raises(GeolocError, match="refused"):
        load_state_dict(path, "torchvision")
    with pytest.raises(GeolocError, match="refused"):
        build_model("resnet18", 16, weights=path)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    pickle.loads(pickle.dumps(_Exploit(marker))).close()
    assert marker.exists()


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"<html>not weights</html>")
    with pytest.raises(GeolocError, match="not a readable PyTorch file"):
        load_state_dict(path, "torchvision")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(GeolocError, match="empty or cut short"):
        load_state_dict(empty, "torchvision")
    with pytest.raises(GeolocError, match="unknown weights format 'onnx'"):
        load_state_dict(path, "onnx")


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD * 100)
    assert sha256_file(path) == hashlib.sha256(PAYLOAD * 100).hexdigest()


# ---------------------------------------------------------------- checks where weights are used


def test_verify_weights_returns_the_digest_and_accepts_the_pinned_digest_or_prefix(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(PAYLOAD)
    assert verify_weights(path, None) == PAYLOAD_SHA
    assert verify_weights(path, PAYLOAD_SHA) == PAYLOAD_SHA
    assert verify_weights(path, PAYLOAD_SHA[:8]) == PAYLOAD_SHA


def test_verify_weights_refuses_another_file_naming_it_and_both_digests(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(PAYLOAD)
    pinned = "0" * 64
    with pytest.raises(GeolocError) as error:
        verify_weights(path, pinned)
    assert str(error.value) == (
        f"weights file {path} has sha256 {PAYLOAD_SHA}, but the registry pins {pinned}: "
        "it is another file (delete it and run fetch-weights again)"
    )


@pytest.mark.parametrize(
    "pinned, message",
    [
        ("abc", "must be 8 to 64 lowercase hex digits, got 'abc'"),
        (PAYLOAD_SHA.upper(), "must be 8 to 64 lowercase hex digits"),
        (12345678, "got 12345678"),
    ],
)
def test_verify_weights_refuses_a_malformed_pinned_digest(tmp_path, pinned, message):
    path = tmp_path / "w.pth"
    path.write_bytes(PAYLOAD)
    with pytest.raises(GeolocError, match=message):
        verify_weights(path, pinned)


def test_verify_weights_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(GeolocError, match=f"weights file {re.escape(str(tmp_path / 'gone.pth'))} does not exist"):
        verify_weights(tmp_path / "gone.pth", PAYLOAD_SHA)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_pretrained_weights_with_non_finite_values_are_refused_before_training(tmp_path, resnet18_state, bad):
    damaged = {key: value.clone() for key, value in resnet18_state.items()}
    damaged["layer2.0.bn1.running_var"][3] = bad
    path = tmp_path / "w.pth"
    torch.save(damaged, path)
    with pytest.raises(GeolocError) as error:
        build_model("resnet18", 16, weights=path)
    assert str(error.value) == (
        f"weights file {path} (resnet18) is damaged: non-finite values (NaN or inf) in layer2.0.bn1.running_var"
    )


def test_a_refused_pickle_names_the_code_it_would_run_and_never_suggests_running_it(tmp_path, resnet18_state):
    path = tmp_path / "evil.pth"
    torch.save({**resnet18_state, "fc.weight": _Exploit(tmp_path / "pwned")}, path)
    with pytest.raises(GeolocError) as error:
        load_state_dict(path, "torchvision")
    message = str(error.value)
    assert message == (
        f"weights file {path} was refused: loading it would run the Python code it names "
        "(io.open); geoloc loads tensors only"
    )
    assert "weights_only" not in message and "Re-running" not in message


def test_a_refused_legacy_pickle_names_the_code_too(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(1), "call": os.system}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(GeolocError, match=r"would run the Python code it names \(posix\.system\)"):
        load_state_dict(path, "torchvision")


def _saved_model(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(path, build_model("mobilenet_v3_small", 8))
    return path, torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("fc_output_dim", "512", "fc_output_dim must be a positive integer, got '512'"),
        ("fc_output_dim", True, "fc_output_dim must be a positive integer, got True"),
        ("backbone", 5, "backbone must be a backbone name, got 5"),
        ("trainable_blocks", "3", "trainable_blocks must be null or an integer >= 0, got '3'"),
        ("state_dict", [1, 2], "state_dict must be a mapping of tensor names to tensors, got list"),
        ("state_dict", {"a": 1}, "state_dict must be a mapping of tensor names to tensors, got dict"),
        ("backbone", None, "backbone must be a backbone name, got None"),
    ],
)
def test_a_hand_edited_model_file_with_wrong_field_types_is_one_error_line(tmp_path, field, value, message):
    path, payload = _saved_model(tmp_path)
    torch.save({**payload, field: value}, path)
    with pytest.raises(GeolocError) as error:
        load_model(path)
    assert str(error.value) == f"model file {path} is damaged: {message}"


def test_a_model_file_missing_a_field_or_a_tensor_is_one_error_line(tmp_path):
    path, payload = _saved_model(tmp_path)
    torch.save({key: value for key, value in payload.items() if key != "fc_output_dim"}, path)
    with pytest.raises(GeolocError, match=r"model file .* is damaged: it has no 'fc_output_dim'$"):
        load_model(path)
    state = dict(payload["state_dict"])
    del state["aggregation.fc.bias"]
    torch.save({**payload, "state_dict": state}, path)
    with pytest.raises(GeolocError, match=r"does not fit the network; missing keys: aggregation\.fc\.bias$"):
        load_model(path)


@pytest.mark.parametrize("written", ["12345678", "00000000"])
def test_an_unquoted_all_digit_sha256_is_refused_with_the_advice_to_quote_it(tmp_path, written):
    registry = tmp_path / "w.yaml"
    registry.write_text(
        f"resnet18:\n  imagenet:\n    url: file:///w.pth\n    sha256: {written}\n"
        "    size: null\n    format: torchvision\n"
    )
    with pytest.raises(GeolocError) as error:
        lookup(registry, "resnet18", "imagenet")
    message = str(error.value)
    assert "write the digest in quotes" in message and "got 0" not in message


def test_an_invalid_yaml_registry_is_one_error_line_with_its_place(tmp_path):
    registry = tmp_path / "w.yaml"
    registry.write_text("resnet18:\n  imagenet: {url: [unclosed\n")
    with pytest.raises(GeolocError) as error:
        lookup(registry, "resnet18", "imagenet")
    message = str(error.value)
    assert "\n" not in message and "^" not in message
    assert re.fullmatch(
        rf"weights registry {re.escape(str(registry))} is not valid YAML: .+ \(line 3, column 1\)", message
    ), message


def test_a_mismatching_file_in_place_is_deleted_even_when_the_new_download_fails(site, tmp_path):
    out = tmp_path / "w.pth"
    out.write_bytes(b"someone else's weights")
    with pytest.raises(GeolocError, match="HTTP 404"):
        fetch(_entry(f"{site.url}/gone.pth"), out, retries=0)
    assert _leftovers(tmp_path) == []


def test_a_file_in_place_for_an_unpinned_entry_is_kept(site, tmp_path):
    out = tmp_path / "w.pth"
    out.write_bytes(b"put here by hand")
    assert (
        fetch(_entry(f"{site.url}/gone.pth", sha256=None, size=None), out)
        == hashlib.sha256(b"put here by hand").hexdigest()
    )
    assert site.requests == [] and out.read_bytes() == b"put here by hand"


def test_fetch_weights_refuses_negative_retries_in_the_schemas_words(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fetch-weights",
                "--registry",
                str(REGISTRY),
                "--backbone",
                "resnet18",
                "--pretraining",
                "imagenet",
                "--out",
                str(tmp_path / "w.pth"),
                "--retries",
                "-1",
            ]
        )
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "geoloc fetch-weights: error: argument --retries: -1 is less than the minimum of 0"
    )
