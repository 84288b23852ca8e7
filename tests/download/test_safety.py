"""Untrusted-manifest guards (paths, URLs, addresses) and token rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfd.core.download.engine import prepare_url
from cfd.core.errors import UnsafeManifestValue
from cfd.core.download.safety import check_host, check_url, is_public_address, safe_filename, safe_relative_path, target_path
from cfd.core.download.tokens import Tokens, auth_header, host_in, load_tokens, service_of, token_hint


@pytest.mark.parametrize(
    "relpath",
    ["../x.safetensors", "checkpoints/../../x", "/etc/passwd", "\\\\server\\share\\x", "C:/x.ckpt", "c:x",
     "", "  ", "checkpoints/\x00x", ".cfd/staging/abc.part", "./.cfd/locks/x", "a/..", "..\\..\\x"],
)
def test_escaping_paths_are_refused(relpath: str) -> None:
    with pytest.raises(UnsafeManifestValue) as info:
        safe_relative_path(relpath)
    assert "refusing model path" in info.value.message


@pytest.mark.parametrize(
    ("relpath", "normal"),
    [("checkpoints/a.safetensors", "checkpoints/a.safetensors"), ("loras\\sub\\b.pt", "loras/sub/b.pt"),
     ("./vae//c.ckpt", "vae/c.ckpt"), ("a..b/c...d", "a..b/c...d")],
)
def test_inside_paths_are_normalised(relpath: str, normal: str) -> None:
    assert safe_relative_path(relpath) == normal


@pytest.mark.parametrize("filename", ["a/b.safetensors", "..", ".", "x\\y", "", "C:evil", "a\nb"])
def test_filenames_with_separators_are_refused(filename: str) -> None:
    with pytest.raises(UnsafeManifestValue):
        safe_filename(filename)
    with pytest.raises(UnsafeManifestValue):
        safe_relative_path("checkpoints/ok.safetensors", filename)


def test_symlinked_category_folder_is_fine(tmp_path: Path) -> None:
    elsewhere = tmp_path / "big-disk" / "checkpoints"
    elsewhere.mkdir(parents=True)
    models = tmp_path / "models"
    models.mkdir()
    (models / "checkpoints").symlink_to(elsewhere)
    target = target_path(models, "checkpoints/a.safetensors")
    assert target == models / "checkpoints" / "a.safetensors"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "http://", "https:///x",
            "http://exa mple.com/x", "http://example.com:99999/x", "gopher://x/y", "//example.com/x"],
)
def test_only_http_urls_with_a_host_pass(url: str) -> None:
    with pytest.raises(UnsafeManifestValue):
        check_url(url)


def test_good_urls_pass() -> None:
    for url in ("https://huggingface.co/org/repo/resolve/main/a.safetensors", "http://127.0.0.1:8080/a?b=c"):
        assert check_url(url) == url


def test_secrets_never_appear_in_refusals() -> None:
    with pytest.raises(UnsafeManifestValue) as info:
        check_url("ftp://user:hunter2@example.com/x?token=sekrit")
    assert "hunter2" not in str(info.value) and "sekrit" not in str(info.value)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "255.255.255.255", "::1", "fe80::1%eth0", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
     "ff02::1", "240.0.0.1", "not-an-ip"],
)
def test_private_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)


def test_check_host_refuses_loopback_names_unless_allowed() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(UnsafeManifestValue) as info:
            check_host(host, 80, allow_private=False)
        assert "cfd.allowPrivateNetworks" in str(info.value)
        check_host(host, 80, allow_private=True)


def test_hf_blob_links_become_resolve_links() -> None:
    url = "https://huggingface.co/org/repo/blob/main/sub/a.safetensors?download=true"
    assert prepare_url(url) == "https://huggingface.co/org/repo/resolve/main/sub/a.safetensors?download=true"
    # Other hosts keep their paths.
    assert prepare_url("https://example.com/x/blob/main/a") == "https://example.com/x/blob/main/a"


def test_civitai_model_pages_become_api_downloads() -> None:
    assert (prepare_url("https://civitai.com/models/4384/dreamshaper?modelVersionId=128713")
            == "https://civitai.com/api/download/models/128713")
    api = "https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor"
    assert prepare_url(api) == api


def test_prepare_url_refuses_bad_schemes() -> None:
    with pytest.raises(UnsafeManifestValue):
        prepare_url("file:///etc/shadow")


# -- tokens -------------------------------------------------------------------


def test_hf_token_sources_in_order(tmp_path: Path) -> None:
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_file\n")
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert load_tokens(env).hf == "hf_file"
    assert load_tokens({**env, "HUGGING_FACE_HUB_TOKEN": "hf_old"}).hf == "hf_old"
    tokens = load_tokens({**env, "HUGGING_FACE_HUB_TOKEN": "hf_old", "HF_TOKEN": "hf_new"})
    assert (tokens.hf, tokens.hf_origin) == ("hf_new", "HF_TOKEN")


def test_hf_token_file_default_location(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_home")
    assert load_tokens({"HOME": str(home)}).hf == "hf_home"
    assert load_tokens({"HOME": str(tmp_path / "nobody")}).hf is None


def test_civitai_token_sources_in_order() -> None:
    assert load_tokens({}, "ws").civitai == "ws"
    assert load_tokens({"CIVITAI_API_TOKEN": "b"}, "ws").civitai == "b"
    tokens = load_tokens({"CIVITAI_API_TOKEN": "b", "CIVITAI_API_KEY": "a"}, "ws")
    assert (tokens.civitai, tokens.civitai_origin) == ("a", "CIVITAI_API_KEY")


def test_tokens_never_in_repr() -> None:
    tokens = Tokens("hf_secret", "civ_secret", "HF_TOKEN", "CIVITAI_API_KEY")
    assert "secret" not in repr(tokens)


def test_tokens_go_only_to_their_service() -> None:
    tokens = Tokens("hf", "civ")
    assert auth_header(tokens, service_of("huggingface.co")) == {"Authorization": "Bearer hf"}
    assert auth_header(tokens, service_of("cdn-lfs.huggingface.co")) == {"Authorization": "Bearer hf"}
    assert auth_header(tokens, service_of("civitai.com")) == {"Authorization": "Bearer civ"}
    for host in ("example.com", "huggingface.co.evil.com", "evilhuggingface.co", "notcivitai.com"):
        assert auth_header(tokens, service_of(host)) == {}
    assert host_in("HF.CO.", ("hf.co",))


def test_token_hints_name_the_variable_not_the_value() -> None:
    tokens = Tokens("hf_secret", None, "HF_TOKEN", None)
    hint = token_hint(tokens, "huggingface", 403)
    assert "HF_TOKEN" in hint and "hf_secret" not in hint
    assert "CIVITAI_API_KEY" in token_hint(tokens, "civitai", 401)
    assert "pyproject.toml" in token_hint(tokens, None, 401)


def test_environment_is_isolated() -> None:
    assert "HF_TOKEN" not in os.environ


# -- manifest text on its way to output, what a URL really reaches (issue 10, items 1, 2, 8, 13) ---------------------

from cfd.core.download.session import connect_target  # noqa: E402
from cfd.core.manifest.model import parse_manifest  # noqa: E402
from cfd.core.text import sanitize  # noqa: E402
from cfd.core.download.tokens import hf_hosts_from_env, token_service  # noqa: E402
from cfd.core.download.urls import redact_url, target_of  # noqa: E402


def test_a_hash_key_with_a_trailing_newline_is_no_hash() -> None:
    text = '[tool.comfydock.models]\n"0123456789abcdef\\n" = {filename = "a.safetensors"}\n'
    parsed = parse_manifest(text.encode())
    assert parsed.models == {} and any("\\u000a" in p and "not a model hash" in p for p in parsed.problems)


def test_the_sanitiser_shows_controls_and_bidi_as_escapes() -> None:
    raw = "a\x1b]0;t\x07\x1b[2J\nb\u202egpj\u2066\u200b\x9b\x7f"
    assert sanitize(raw) == "a\\u001b]0;t\\u0007\\u001b[2J\\u000ab\\u202egpj\\u2066\\u200b\\u009b\\u007f"
    assert sanitize("plain é 字 😀") == "plain é 字 😀"


@pytest.mark.parametrize(
    "url",
    ["http://attacker.example\\@huggingface.co/x", "https://evil\\@hf.co/x", "http://huggingface.co:443\\@evil/x",
     "http://a@b@huggingface.co/x", "http://%68f.co/x", "http://hf\u3002co/x", "http://\uff48f.co/x",
     "http://①②⑦.0.0.1/x", "http://evil.com\\.hf.co/", "http://[::1%25eth0]/x", "http://:80/x"],
)
def test_authorities_that_parsers_read_differently_are_refused(url: str) -> None:
    with pytest.raises(UnsafeManifestValue) as info:
        check_url(url)
    shown = str(info.value)
    assert "huggingface.co" not in shown and "hf.co" not in shown  # never the host that would not be contacted


@pytest.mark.parametrize(
    ("url", "origin"),
    [("https://huggingface.co/a", ("https", "huggingface.co", 443)), ("http://HF.co:8080/a", ("http", "hf.co", 8080)),
     ("http://u:p%40w@127.0.0.1/a", ("http", "127.0.0.1", 80)), ("https://[::1]:8443/a", ("https", "::1", 8443)),
     ("http://evil?@hf.co/x", ("http", "evil", 80)), ("http://hf.co#@evil/x", ("http", "hf.co", 80))],
)
def test_the_checked_host_is_the_one_urllib3_connects_to(url: str, origin: tuple[str, str, int]) -> None:
    assert target_of(url).origin == origin
    assert connect_target(url).origin == origin  # urllib3's own reading agrees


def test_tokens_go_over_https_to_their_own_host_and_port_only() -> None:
    def service(url: str, hf: tuple[str, ...] = ("huggingface.co", "hf.co")) -> str | None:
        return token_service(target_of(url), hf)

    assert service("https://huggingface.co/x") == "huggingface"
    assert service("https://cdn-lfs.huggingface.co/x") == "huggingface"
    assert service("https://huggingface.co:443/x") == "huggingface"
    assert service("https://civitai.com/api/download/models/1") == "civitai"
    for url in ("http://huggingface.co/x", "https://huggingface.co:8443/x", "http://huggingface.co:443/x",
                "https://huggingface.co.evil.com/x", "http://civitai.com/x"):
        assert service(url) is None, url
    mirror = hf_hosts_from_env({"HF_ENDPOINT": "https://hf-mirror.example:8443"})
    assert service("https://hf-mirror.example:8443/x", mirror) == "huggingface"
    assert service("https://hf-mirror.example/x", mirror) is None
    plain = hf_hosts_from_env({"HF_ENDPOINT": "http://hf-mirror.example"})
    assert service("http://hf-mirror.example/x", plain) is None
    assert hf_hosts_from_env({"HF_ENDPOINT": "https://evil\\@huggingface.co"}) == ("huggingface.co", "hf.co")


def test_redaction_covers_signed_url_parameters_and_shows_the_real_host() -> None:
    url = ("https://u:pw@storage.example/x?X-Goog-Signature=a1&X-Goog-Credential=a2&X-Amz-Security-Token=a3"
           "&hf_token=a4&access-token=a5&Password=a6&X-Amz-Signature=a7&client_secret=a8&download=true&modelVersionId=5")
    shown = redact_url(url)
    assert not any(f"a{n}" in shown for n in range(1, 9)), shown
    assert shown.startswith("https://***@storage.example/x?") and "download=true" in shown and "modelVersionId=5" in shown
    assert redact_url("http://attacker.example\\@huggingface.co/x") == "http://<invalid host>"
    assert redact_url("/x?X-Goog-Signature=s1&a=b") == "/x?X-Goog-Signature=***&a=b"  # urllib3's log lines


@pytest.mark.parametrize(
    "relpath",
    [".CFD/staging/x.part", ".Cfd/locks/x", "checkpoints/a.safetensors:stream", "checkpoints/CON", "NUL/a.safetensors",
     "checkpoints/com1.safetensors", "checkpoints/lpt9.txt", "checkpoints./a.safetensors", "checkpoints/a.safetensors.",
     "checkpoints/a.safetensors ", "checkpoints /a", "checkpoints/a?.safetensors", "checkpoints/a|b", "checkpoints/<a>"],
)
def test_names_windows_cannot_hold_are_refused_everywhere(relpath: str) -> None:
    with pytest.raises(UnsafeManifestValue):
        safe_relative_path(relpath)


@pytest.mark.parametrize("filename", ["CON", "nul.txt", "Com3.safetensors", "a.safetensors:stream", "a.safetensors.",
                                      "a.safetensors ", 'a"b'])
def test_filenames_windows_cannot_hold_are_refused(filename: str) -> None:
    with pytest.raises(UnsafeManifestValue):
        safe_filename(filename)


def test_the_agent_log_passes_through_the_sanitiser() -> None:
    import logging

    from cfd.agent.daemon import _SanitizingFormatter

    record = logging.LogRecord("cfd.agent", logging.WARNING, __file__, 1, "download failed: %s: %s",
                               ("\x1b]0;pwned\x07\u202egpj.safetensors", "x\ny"), None)
    line = _SanitizingFormatter("%(message)s").format(record)
    assert line == "download failed: \\u001b]0;pwned\\u0007\\u202egpj.safetensors: x\\u000ay"  # no forged line
