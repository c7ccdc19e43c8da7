# Two images from one file:
#   server: web and beat (and compression jobs that need only onnxruntime)
#   worker:           + the torch and TFLite export stacks (export-onnx, tflite, tflm jobs)
# docker-compose.yml builds both (`target:`).
FROM python:3.11-slim AS server
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY tinyfleet ./tinyfleet
COPY core ./core
COPY accounts ./accounts
COPY compression ./compression
COPY fleet ./fleet
COPY templates ./templates
COPY static ./static
COPY manage.py ./
RUN pip install --no-cache-dir -e '.[server,compress]' -e './agent[onnx,text]' \
 && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir build/agent-wheel ./agent
# The agent wheel devices install from /agent/ (fleet/agent_dist.py), built into the image.
ENV TINYFLEET_AGENT_WHEEL_DIR=/app/build/agent-wheel
EXPOSE 8000

FROM server AS worker
# torch's CPU build from its own index: the PyPI default pulls gigabytes of CUDA.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
      -e '.[server,compress,torch,tflite]'
