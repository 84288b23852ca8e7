"""`cfd demo`: the whole product in a throwaway sandbox, with nothing to configure.

Two teammates (Alice and Bob) each have a ComfyGit workspace (the current format;
`--dialect comfydock` for ComfyDock 1.0's) and a clone of one environment; a real HTTP server on 127.0.0.1 serves generated models.
Alice pushes a workflow that needs new models; Bob's real `git pull` fires the
installed hook, `cfd status` and `cfd repair` do the rest. Every step checks its
own result, so the demo doubles as an end-to-end test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cfd.core.dialect import COMFYGIT, Dialect
from cfd.core.store.shorthash import short_hash_file

from .content import write_model_file
from .server import ModelServer

MIB = 1024 * 1024
ENV_NAME = "studio"


@dataclass(frozen=True)
class DemoModel:
    key: str
    filename: str
    category: str
    size_mib: float
    seed: int
    served: bool = True

    @property
    def relative_path(self) -> str:
        return f"{self.category}/{self.filename}"


# Sizes at scale 1.0 add up to a few hundred MB: big enough to see progress.
MODELS = (
    DemoModel("base", "sd15-base.safetensors", "checkpoints", 40, 1),
    DemoModel("sdxl", "juggernaut-xl-v9.safetensors", "checkpoints", 160, 2),
    DemoModel("lora", "film-grain-lora.safetensors", "loras", 24, 3),
    DemoModel("vae", "sdxl-vae-fp16.safetensors", "vae", 48, 4),
    DemoModel("upscale", "4x-ultrasharp.pth", "upscale_models", 16, 5, served=False),
)


class DemoFailed(Exception):
    """A step's result was not what the story expects."""


class Demo:
    def __init__(self, root: Path, scale: float, out: Callable[[str], None], dialect: Dialect = COMFYGIT) -> None:
        self.root = root
        self.dialect = dialect
        self.scale = scale
        self.out = out
        self.server: ModelServer | None = None
        self.hashes: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.git_env = self._git_env()

    # -- plumbing ------------------------------------------------------------

    def _git_env(self) -> dict[str, str]:
        gitconfig = self.root / "gitconfig"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "CFD_"))}
        # The user's own git config (hooksPath, templates) must not change the story.
        env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1")
        return env

    def workspace(self, who: str) -> Path:
        return self.root / who / self.dialect.default_home

    def clone_dir(self, who: str) -> Path:
        return self.workspace(who) / "environments" / ENV_NAME / ".cec"

    def env_for(self, who: str) -> dict[str, str]:
        env = dict(self.git_env)
        env[self.dialect.home_env] = str(self.workspace(who))
        return env

    def run(self, who: str, argv: Sequence[str], cwd: Path | None = None, show: bool = True) -> subprocess.CompletedProcess[str]:
        shown = " ".join(argv)
        if show:
            self.out(f"  {who}$ {shown}")
        result = subprocess.run(
            list(argv), cwd=cwd or self.clone_dir(who), env=self.env_for(who), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
        )
        if show:
            for line in result.stdout.splitlines():
                self.out(f"    {line}")
        return result

    def cfd(self, who: str, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.run(who, [sys.executable, "-m", "cfd.cli.main", *args], show=False)
        if show:
            self.out(f"  {who}$ cfd {' '.join(args)}")
            for line in result.stdout.splitlines():
                self.out(f"    {line}")
        return result

    def git(self, who: str, *args: str, show: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(who, ["git", *args], cwd=cwd, show=show)
        if result.returncode != 0:
            raise DemoFailed(f"git {' '.join(args)} failed for {who}: {result.stdout.strip()}")
        return result

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            raise DemoFailed(what)
        self.out(f"  ✓ {what}")

    # -- the sandbox -----------------------------------------------------------

    def build(self) -> None:
        (self.root / "gitconfig").write_text(
            "[user]\n\tname = cfd demo\n\temail = demo@example.invalid\n"
            "[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n[pull]\n\trebase = false\n"
        )
        served = self.root / "server"
        self.server = ModelServer().start()
        for model in MODELS:
            size = max(int(model.size_mib * self.scale * MIB), 64)
            path = write_model_file(served / model.relative_path, model.seed, size)
            self.hashes[model.key] = short_hash_file(path, self.dialect.short_hash)
            self.sizes[model.key] = size
            if model.served:
                self.server.add_file(f"/{model.relative_path}", path)
        for who in ("alice", "bob"):
            ws = self.workspace(who)
            (ws / ".metadata").mkdir(parents=True)
            (ws / ".metadata" / "workspace.json").write_text(
                json.dumps({"version": 1, "global_model_directory": {"path": str(ws / "models")}}, indent=2)
            )
            base = next(m for m in MODELS if m.key == "base")
            target = ws / "models" / base.relative_path
            target.parent.mkdir(parents=True)
            shutil.copyfile(served / base.relative_path, target)
        upstream = self.root / "upstream.git"
        self.git("alice", "init", "-q", "--bare", str(upstream), cwd=self.root, show=False)
        seed = self.root / "seed"
        self.git("alice", "clone", "-q", str(upstream), str(seed), cwd=self.root, show=False)
        (seed / "pyproject.toml").write_text(self.manifest(with_landscape=False))
        (seed / "workflows").mkdir()
        (seed / "workflows" / "portrait.json").write_text('{"nodes": []}\n')
        self.git("alice", "add", "-A", cwd=seed, show=False)
        self.git("alice", "commit", "-q", "-m", "Portrait workflow", cwd=seed, show=False)
        self.git("alice", "push", "-q", "origin", "HEAD:main", cwd=seed, show=False)
        for who in ("alice", "bob"):
            self.clone_dir(who).parent.mkdir(parents=True)
            self.git(who, "clone", "-q", str(upstream), str(self.clone_dir(who)), cwd=self.root, show=False)
            (self.clone_dir(who).parent / "ComfyUI").mkdir()  # where ComfyUI loads workflows from
            self.git(who, "config", "cfd.allowPrivateNetworks", "true", show=False)
            self.cfd(who, "index", "scan", show=False)
        hooks = self.cfd("bob", "hooks", "install", show=False)
        if hooks.returncode != 0:
            raise DemoFailed(f"cfd hooks install failed: {hooks.stdout.strip()}")

    def url(self, key: str) -> str:
        model = next(m for m in MODELS if m.key == key)
        assert self.server is not None
        return self.server.url(f"/{model.relative_path}")

    def manifest(self, with_landscape: bool) -> str:
        def entry(key: str) -> str:
            model = next(m for m in MODELS if m.key == key)
            sources = f'["{self.url(key)}"]' if model.served else "[]"
            return (
                f'{self.hashes[key]} = {{filename = "{model.filename}", size = {self.sizes[key]}, '
                f'relative_path = "{model.relative_path}", category = "{model.category}", sources = {sources}}}'
            )

        def ref(key: str, criticality: str, node_id: str, node_type: str) -> str:
            model = next(m for m in MODELS if m.key == key)
            return (
                "\n[[tool.{tool}.workflows.{wf}.models]]\n"
                f'filename = "{model.filename}"\ncategory = "{model.category}"\ncriticality = "{criticality}"\n'
                f'status = "resolved"\nhash = "{self.hashes[key]}"\n'
                f'nodes = [{{node_id = "{node_id}", node_type = "{node_type}", widget_idx = 0, widget_value = "{model.filename}"}}]\n'
            )

        keys = ["base"] + (["sdxl", "lora", "vae", "upscale"] if with_landscape else [])
        text = (
            '[project]\nname = "comfyui-studio"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = []\n\n'
            '[tool.{tool}]\n' + ("schema_version = 2\n" if self.dialect is COMFYGIT else "")
            + 'comfyui_version = "v0.3.60"\npython_version = "3.11"\n\n'
            "[tool.{tool}.models]\n" + "\n".join(entry(k) for k in keys) + "\n\n"
            '[tool.{tool}.workflows.portrait]\npath = "workflows/portrait.json"\n'
        ).replace("{tool}", self.dialect.name)
        text += ref("base", "required", "4", "CheckpointLoaderSimple").replace("{wf}", "portrait").replace("{tool}", self.dialect.name)
        if with_landscape:
            text += ref("vae", "flexible", "9", "VAELoader").replace("{wf}", "portrait")
            text += '\n[tool.{tool}.workflows.landscape]\npath = "workflows/landscape.json"\n'
            text += ref("sdxl", "required", "4", "CheckpointLoaderSimple").replace("{wf}", "landscape")
            text += ref("lora", "optional", "7", "LoraLoader").replace("{wf}", "landscape")
            text += ref("vae", "flexible", "9", "VAELoader").replace("{wf}", "landscape")
            text += ref("upscale", "flexible", "12", "UpscaleModelLoader").replace("{wf}", "landscape")
            text = text.replace("{tool}", self.dialect.name)
        return text

    def present(self, who: str, key: str) -> bool:
        model = next(m for m in MODELS if m.key == key)
        path = self.workspace(who) / "models" / model.relative_path
        return (path.is_file() and path.stat().st_size == self.sizes[key]
                and short_hash_file(path, self.dialect.short_hash) == self.hashes[key])

    def status_json(self, who: str) -> dict:  # type: ignore[type-arg]
        result = self.cfd(who, "status", "--json", show=False)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise DemoFailed(f"cfd status --json printed no JSON: {result.stdout.strip()[:300]}") from None

    # -- the story -------------------------------------------------------------

    def story(self) -> None:
        step = self.out
        step("\n1. Alice adds a 'landscape' workflow: a new SDXL checkpoint (required), a film-grain LoRA")
        step("   (optional), an SDXL VAE shared with her 'portrait' workflow, and an upscaler with no source.")
        alice = self.clone_dir("alice")
        (alice / "pyproject.toml").write_text(self.manifest(with_landscape=True))
        (alice / "workflows" / "landscape.json").write_text('{"nodes": []}\n')
        self.git("alice", "add", "-A")
        self.git("alice", "commit", "-q", "-m", "Add landscape workflow")
        self.git("alice", "push", "-q")

        step("\n2. Bob pulls. His post-merge hook sees the new models and downloads the required one now.")
        pull = self.git("bob", "pull", "--no-rebase")
        self.expect(self.present("bob", "sdxl"), "the required SDXL checkpoint arrived, verified, during git pull")
        self.expect(not self.present("bob", "lora") and not self.present("bob", "vae"), "the optional/flexible models were left for later")
        clean = self.git("bob", "status", "--porcelain", show=False).stdout.strip() == ""
        self.expect(clean, "the pull left .cec clean (hooks never change tracked files)")
        self.expect("cfd repair" in pull.stdout, "the hook pointed at `cfd repair` for the rest")
        landscape = self.clone_dir("bob").parent / "ComfyUI" / "user" / "default" / "workflows" / "landscape.json"
        self.expect(landscape.is_file(), "the pulled 'landscape' workflow is where ComfyUI loads it")

        step("\n3. Bob asks what is still missing.")
        self.cfd("bob", "status")
        status = self.status_json("bob")
        missing = {m["filename"] for m in status["missing"]}
        self.expect(
            missing == {"film-grain-lora.safetensors", "sdxl-vae-fp16.safetensors", "4x-ultrasharp.pth"},
            "status lists the LoRA, the shared VAE and the source-less upscaler",
        )
        self.expect(any(not m["can_download"] for m in status["missing"]), "the upscaler is reported as unavailable")

        step("\n4. Bob repairs: the rest arrives, verified; the upscaler cannot be downloaded.")
        repair = self.cfd("bob", "repair", "--yes")
        self.expect(self.present("bob", "lora") and self.present("bob", "vae"), "the LoRA and the VAE are in place and verified")
        self.expect(repair.returncode == 1, "repair exits 1 because the upscaler is still unavailable")

        step("\n5. The final status: in sync but for the model nobody can download.")
        final = self.cfd("bob", "status")
        status = self.status_json("bob")
        self.expect(
            [m["filename"] for m in status["missing"]] == ["4x-ultrasharp.pth"] and final.returncode == 1,
            "only the source-less upscaler is missing",
        )
        total = sum(self.sizes[k] for k in ("sdxl", "lora", "vae"))
        fetched = self.server.bytes_sent() if self.server else 0
        self.expect(fetched == total, f"each model was fetched exactly once ({fetched / MIB:.0f} MiB over HTTP)")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def run_demo(directory: Path | None, keep: bool, scale: float, out: Callable[[str], None] = print,
             dialect: Dialect = COMFYGIT) -> int:
    root = Path(directory).resolve() if directory else Path(tempfile.mkdtemp(prefix="cfd-demo-"))
    if directory:
        if root.exists() and any(root.iterdir()):
            out(f"cfd demo: {root} is not empty; pass an empty or new directory")
            return 2
        root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, scale, out, dialect)
    started = time.monotonic()
    try:
        out(f"Building the sandbox in {root} (model server on 127.0.0.1, two {dialect.title} workspaces, one upstream)...")
        demo.build()
        demo.story()
        out(f"\nThe story went as expected in {time.monotonic() - started:.1f} s.")
        return 0
    except DemoFailed as exc:
        out(f"\ncfd demo: the story went wrong: {exc}")
        return 1
    finally:
        demo.close()
        if keep:
            out(f"Sandbox kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
