FROM python:3.11-slim
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
RUN pip install --no-cache-dir -e '.[server,compress]' -e './agent[onnx,text]'
EXPOSE 8000
