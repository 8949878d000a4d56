# Multi-stage build: the web UI is built with Node, then served by the Python backend from one process.
FROM node:20-bookworm-slim AS web
WORKDIR /app/web_chat
ENV NEXT_TELEMETRY_DISABLED=1
COPY web_chat/package.json web_chat/package-lock.json ./
RUN npm ci
COPY web_chat/ ./
RUN npm run build

FROM python:3.11-slim-bookworm AS app
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# A C compiler: the server builds BitLinear's decode kernel for the CPU it runs on at first start.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY pyproject.toml README.md ./
COPY model/ model/
COPY training/ training/
COPY backend/ backend/
RUN pip install .
COPY models/ models/
COPY --from=web /app/web_chat/out web_chat/out
RUN useradd --create-home nanoprime
USER nanoprime
ENV NANOPRIME_HOST=0.0.0.0 NANOPRIME_PORT=8000
EXPOSE 8000
CMD ["nanoprime", "serve"]
