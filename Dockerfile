# syntax=docker/dockerfile:1
# `openllm serve` in a container, on CPU or on NVIDIA GPUs (the CUDA build of torch brings its own CUDA libraries;
# the host needs only the driver and the NVIDIA container toolkit):
#
#   docker build -t openllm:cpu .
#   docker build -t openllm:cuda --build-arg DEVICE=cuda .
#   docker run -p 8000:8000 -v "$PWD/my-model:/models/model:ro" -e OPENLLM_API_KEY=... openllm:cpu
#   docker run --gpus all -p 8000:8000 -v "$PWD/my-model:/models/model:ro" -e OPENLLM_API_KEY=... openllm:cuda
#
# The container runs as an unprivileged user (uid 1000), serves /models/model on port 8000 (arguments after the image
# name replace that: any `openllm serve` options) and reports its health from /health.
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

# cpu, or cuda (CUDA_WHEELS picks the CUDA build of torch)
ARG DEVICE=cpu
ARG CUDA_WHEELS=cu128
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/openllm/.cache/huggingface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --system --gid 1000 openllm \
    && useradd --system --uid 1000 --gid openllm --create-home --home-dir /home/openllm openllm
WORKDIR /app

# torch first, from PyTorch's own index: a plain `torch` requirement would pull the CUDA wheels into the CPU image
RUN case "${DEVICE}" in \
      cpu) index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index="https://download.pytorch.org/whl/${CUDA_WHEELS}" ;; \
      *) echo "DEVICE must be cpu or cuda, got ${DEVICE}" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${index}"

COPY pyproject.toml README.md ./
COPY model_cards ./model_cards
COPY src ./src
# this checkout itself, with the server's dependencies (their versions are bounded in pyproject.toml)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]" \
    && rm -rf /app/src /app/model_cards

USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["openllm", "serve"]
CMD ["/models/model", "--host", "0.0.0.0", "--port", "8000"]
