"""Static checks of the container and cluster files in docker/ (no Docker engine, no cluster).

The Dockerfile is parsed as text; cluster.yaml and rayjob.yaml are parsed with yaml.safe_load and
checked for what a user relies on: one image tag everywhere (the one the Dockerfile builds), the
same Ray version as the package and the installed ray, the sweep entrypoint and its config, GPU
requests, token authentication, and a dashboard that only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
CLUSTER = DOCKER / "cluster.yaml"
RAYJOB = DOCKER / "rayjob.yaml"
MANIFESTS = (DOCKERFILE, CLUSTER, RAYJOB)
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- Dockerfile parsing


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _args(instrs: list[tuple[str, str]], *, before_from: bool) -> dict[str, str]:
    seen_from = False
    values: dict[str, str] = {}
    for word, rest in instrs:
        if word == "FROM":
            seen_from = True
        if word == "ARG" and seen_from != before_from:
            name, sep, default = rest.partition("=")
            if sep:
                values[name] = default.strip().strip('"')
    return values


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def dockerfile_args(dockerfile) -> dict[str, str]:
    return {**_args(dockerfile, before_from=True), **_args(dockerfile, before_from=False)}


@pytest.fixture(scope="module")
def project() -> dict:
    """version and dependencies from pyproject.toml (regex: tomllib is not in Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]\s*$", text, re.M | re.S).group(1)
    return {
        "version": re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1),
        "dependencies": re.findall(r'"([^"]+)"', deps),
    }


@pytest.fixture(scope="module")
def image_tag(dockerfile_args, project) -> str:
    """The tag convention of docker/README.md: kd-ray:<version>-ray<ray>-<python>-<cuda>."""
    a = dockerfile_args
    return f"kd-ray:{project['version']}-ray{a['RAY_VERSION']}-{a['PYTHON_TAG']}-{a['CUDA_TAG']}"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]


@pytest.fixture(scope="module")
def rayjob(rayjob_docs) -> dict:
    jobs = [d for d in rayjob_docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "docker/rayjob.yaml must hold exactly one RayJob"
    return jobs[0]


def test_base_image_is_official_ray_gpu_with_our_ray_version(dockerfile, dockerfile_args, project):
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert len(froms) == 1
    image = _expand(froms[0].split()[0], dockerfile_args)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(gpu|cu\d+)", image)
    assert match, f"FROM {image}: expected rayproject/ray:<version>-py<XY>-<gpu|cuXYZ>"
    ray_version, py_tag, _ = match.groups()
    assert ray_version == md.version("ray"), "image Ray must equal the installed (client) Ray"
    ray_req = next(d for d in project["dependencies"] if re.match(r"ray\b", d))
    spec = re.sub(r"^ray(\[[^\]]*\])?", "", ray_req).strip()
    from packaging.specifiers import SpecifierSet

    assert ray_version in SpecifierSet(spec), f"{ray_version} does not satisfy pyproject's {ray_req!r}"
    assert py_tag == "py311"


def test_torch_pins_match_the_tested_environment(dockerfile_args):
    assert dockerfile_args["TORCH_VERSION"] == md.version("torch").split("+")[0]
    assert dockerfile_args["TORCHVISION_VERSION"] == md.version("torchvision").split("+")[0]


def test_dockerfile_installs_the_package_as_non_root(dockerfile):
    copies = " ".join(rest for word, rest in dockerfile if word == "COPY")
    for needed in ("pyproject.toml", "kd_ray/", "experiments/"):
        assert needed in copies, f"Dockerfile does not COPY {needed}"
    runs = [rest for word, rest in dockerfile if word == "RUN"]
    assert any(re.search(r"pip install\b.*--no-cache-dir.*\s\.(\s|$)", r) for r in runs), "no `pip install .`"
    users = [rest for word, rest in dockerfile if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"


def test_nothing_is_downloaded_at_container_start(dockerfile):
    for word, rest in dockerfile:
        if word in ("ENTRYPOINT", "CMD"):
            assert not re.search(r"\b(curl|wget|pip|git clone)\b", rest), f"{word} {rest} fetches at run time"


def test_build_context_allow_list_covers_every_copy(dockerfile):
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert "*" in ignore, "the .dockerignore must be an allow-list (start by excluding everything)"
    for word, rest in dockerfile:
        if word != "COPY":
            continue
        sources = [s for s in rest.split() if not s.startswith("--")][:-1]
        for src in sources:
            if any(c in src for c in "*?["):
                continue  # optional file (README.m[d])
            path = src.rstrip("/")
            assert (ROOT / path).exists(), f"COPY {src}: no such path in the repository"
            assert any(path == a or path.startswith(a + "/") for a in allowed), f"COPY {src} is ignored"


# ---------------------------------------------------------------- images and dashboard everywhere


def _images(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                found.append(value)
            else:
                found += _images(value)
    elif isinstance(node, list):
        for item in node:
            found += _images(item)
    return found


def test_every_image_reference_is_the_dockerfile_tag(cluster, rayjob_docs, image_tag):
    images = _images(cluster) + _images(rayjob_docs)
    assert len(images) >= 3  # cluster docker image, RayJob head and worker
    for image in images:
        assert image.endswith("/" + image_tag), f"{image} is not <registry>/{image_tag}"
    assert len(set(images)) == 1, f"several images: {sorted(set(images))}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_dashboard_only_on_loopback(path):
    text = path.read_text()
    assert "0.0.0.0" not in text
    for host in re.findall(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?([^\s\"']+)", text):
        assert host == LOOPBACK, f"{path.name}: dashboard host {host}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_referenced_experiment_configs_exist_and_load(path):
    from kd_ray.config import load_config

    refs = set(re.findall(r"experiments/[\w.-]+\.ya?ml", path.read_text()))
    for ref in refs:
        assert (ROOT / ref).is_file(), f"{path.name} names {ref}, which does not exist"
        load_config(ROOT / ref)


# ---------------------------------------------------------------- cluster launcher


def test_cluster_yaml_passes_ray_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(cluster)))


def test_cluster_yaml_structure(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert isinstance(cluster["max_workers"], int) and cluster["max_workers"] > 0
    workers = {n: t for n, t in types.items() if n != cluster["head_node_type"]}
    gpu = [
        t
        for t in workers.values()
        if re.match(r"(g|p)\d", t["node_config"].get("InstanceType", "")) or t.get("resources", {}).get("GPU")
    ]
    assert gpu and all(t["max_workers"] > 0 for t in gpu), "no GPU worker type"

    head_cmds = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head_cmds
    assert f"--dashboard-host={LOOPBACK}" in head_cmds
    assert "--dashboard-host" not in " ".join(cluster["worker_start_ray_commands"])

    run_options = " ".join(cluster["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", run_options).group(1)
    assert any(token_path.startswith(remote.rstrip("/") + "/") for remote in cluster["file_mounts"]), (
        "the token file must reach every node through file_mounts"
    )


# ---------------------------------------------------------------- KubeRay


def test_rayjob_runs_the_sweep(rayjob, rayjob_docs):
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["kd-ray", "sweep"]
    assert re.search(r"experiments/[\w.-]+\.ya?ml$", argv[2])
    results = argv[argv.index("--results") + 1]
    assert spec["shutdownAfterJobFinishes"] is True

    head = spec["rayClusterSpec"]["headGroupSpec"]
    if "://" not in results:  # a path: it must be on a volume mounted in the head (the driver)
        mounts = [m["mountPath"] for c in head["template"]["spec"]["containers"] for m in c["volumeMounts"]]
        assert any(results.startswith(m.rstrip("/") + "/") for m in mounts), f"{results} is not on a volume"
        claims = {d["metadata"]["name"] for d in rayjob_docs if d.get("kind") == "PersistentVolumeClaim"}
        used = {
            v["persistentVolumeClaim"]["claimName"]
            for v in head["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert used and used <= claims, "the results PVC must be defined next to the RayJob"
        assert all(
            "ReadWriteMany" in d["spec"]["accessModes"]
            for d in rayjob_docs
            if d["kind"] == "PersistentVolumeClaim"
        )


def test_rayjob_cluster_spec(rayjob, dockerfile_args):
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == dockerfile_args["RAY_VERSION"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == LOOPBACK
    if spec.get("submissionMode") == "SidecarMode":
        assert head["template"]["spec"]["restartPolicy"] == "Never"
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["maxReplicas"] >= group.get("replicas", 0) >= group.get("minReplicas", 0)
        for container in group["template"]["spec"]["containers"]:
            for kind in ("requests", "limits"):
                assert int(container["resources"][kind]["nvidia.com/gpu"]) >= 1


# ---------------------------------------------------------------- baked-in pretrained weights


def _prefetch_module():
    sys.path.insert(0, str(DOCKER))
    try:
        import prefetch_weights
    finally:
        sys.path.remove(str(DOCKER))
    return prefetch_weights


def test_prefetched_weights_cover_every_pretrained_config(dockerfile_args):
    prefetch = _prefetch_module()
    urls = {prefetch.resolve(s).url for s in dockerfile_args["PRETRAINED_WEIGHTS"].split()}
    enums = {
        "resnet18": "ResNet18_Weights",
        "resnet50": "ResNet50_Weights",
        "vit_b_16": "ViT_B_16_Weights",
        "vit_b_32": "ViT_B_32_Weights",
    }
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        teacher = (yaml.safe_load(path.read_text()) or {}).get("teacher") or {}
        pretrained = teacher.get("pretrained", False)
        if pretrained is False or teacher.get("arch") not in enums:
            continue
        member = "DEFAULT" if pretrained is True else str(pretrained)
        url = prefetch.resolve(f"{enums[teacher['arch']]}.{member}").url
        assert url in urls, f"{path.name}: {teacher['arch']} {member} weights are not baked into the image"


def test_prefetch_script_fills_torch_home(tmp_path, monkeypatch):
    import torch

    prefetch = _prefetch_module()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        torch.save({"w": torch.zeros(1)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert prefetch.main(["ResNet18_Weights.DEFAULT"]) == 0
    member = prefetch.resolve("ResNet18_Weights.DEFAULT")
    assert fetched == [member.url]
    assert (tmp_path / "hub" / "checkpoints" / Path(member.url).name).is_file()
    with pytest.raises(SystemExit, match="not a torchvision weights member"):
        prefetch.main(["ResNet18_Weights.NOPE"])


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (optional)")
def test_hadolint():
    proc = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
