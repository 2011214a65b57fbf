# syntax=docker/dockerfile:1
# The aisys image the KubeRay manifests name (cluster/kuberay/*.yaml): Ray's image, this repo at /home/ray/aisys,
# and exactly the dependency versions of requirements.lock. One file, two variants:
#   docker build --build-arg VARIANT=cpu -t ghcr.io/aisys/aisys:0.1.0-ray2.60.0-py311-cpu .
#   docker build --build-arg VARIANT=gpu -t ghcr.io/aisys/aisys:0.1.0-ray2.60.0-py311-gpu .
# The GPU variant starts from Ray's CUDA image and swaps the lock's CPU build of torch for the CUDA build of the
# same version. Checked by hadolint in tests/unit/test_container_image.py (no image is built in CI: the CI
# machine reaches package registries only, not a container registry).
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

ARG VARIANT=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA wheels of the pinned torch for the GPU variant (Ray 2.60's GPU image ships CUDA 12.8).
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/aisys
# Dependencies first (cached while only the code changes): the lock, then torch for the variant.
COPY --chown=ray:users requirements.lock pyproject.toml ./
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
 && TORCH="$(grep '^torch==' requirements.lock | cut -d= -f3 | cut -d+ -f1)" \
 && if [ "${VARIANT}" = "gpu" ]; then INDEX="${TORCH_CUDA_INDEX}"; else INDEX="${TORCH_CPU_INDEX}"; fi \
 && pip install --no-cache-dir --index-url "${INDEX}" "torch==${TORCH}" \
 && pip install --no-cache-dir -r /tmp/constraints.txt \
 && rm /tmp/constraints.txt

COPY --chown=ray:users aisys ./aisys
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users serve_configs ./serve_configs
COPY --chown=ray:users README.md ./
RUN pip install --no-cache-dir --no-deps -e . \
 && python -c "import aisys, torch, ray; print('aisys image:', ray.__version__, torch.__version__)"

# API keys and the session secret are not baked in: they come from a Kubernetes Secret mounted into the pods
# (docs/operations.md#keys-on-a-cluster).
# 1000 is the `ray` user of Ray's images.
USER 1000
