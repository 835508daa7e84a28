# metalab's dashboard for a shared demo: demo mode, a non-root user, the run store and datasets on a volume at /data.
# Build and run (docs/deploy.md has more):
#   docker build -t metalab .
#   docker run -d --init -p 127.0.0.1:8501:8501 -v metalab-data:/data --name metalab metalab
FROM python:3.11-slim

# The user's fixed uid (and gid). Hugging Face Spaces run containers as uid 1000: build there with APP_UID=1000.
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    METALAB_MODE=demo \
    METALAB_HOME=/data/home \
    METALAB_DATA_DIR=/data/datasets \
    METALAB_CACHE_DIR=/data/cache \
    KERAS_HOME=/data/keras

WORKDIR /opt/metalab
# Only what `pip install .` needs: tests, benchmarks, examples and docs stay out of the image.
COPY pyproject.toml README.md LICENSE streamlit_app.py ./
COPY core ./core
COPY plugins ./plugins
COPY dashboard ./dashboard

# No dev extras; tensorflow-cpu comes from pyproject.toml. Build leftovers go in the same layer they are made in.
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info \
    && groupadd --gid "${APP_UID}" metalab \
    && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --home-dir /home/metalab \
               --shell /usr/sbin/nologin metalab \
    && mkdir -p /data/home /data/datasets /data/cache /data/keras \
    && chown -R "${APP_UID}:${APP_UID}" /data

# A new named volume starts as a copy of /data here, so it belongs to the metalab user.
VOLUME ["/data"]
USER ${APP_UID}:${APP_UID}
WORKDIR /home/metalab
EXPOSE 8501

# slim has no curl: ask Streamlit's health endpoint with the standard library (exit 1 unless it answers "ok").
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"]

# `metalab dashboard` stops its Streamlit server on SIGTERM (docker stop).
CMD ["metalab", "dashboard", "--mode", "demo", "--host", "0.0.0.0", "--port", "8501"]
