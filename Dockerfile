# The anonymizer container AnoMed runs: mirror of `make serve` (no Docker engine here to build it).
FROM python:3.12-slim

# onnxoptimizer builds from source on 3.12
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY anonymizer/ anonymizer/
COPY app.py .

# The platform sets CHALLENGE_HOST; models live under MODEL_DIR (mount a volume to keep them).
ENV MODEL_DIR=/data/models \
    ANONYMIZER_ID=fhe_anonymizer
RUN mkdir -p /data/models
EXPOSE 8000

# /fit compiles an FHE circuit: the worker timeout must outlast it
CMD ["gunicorn", "app:application", "--bind", "0.0.0.0:8000", "--workers", "2", \
     "--threads", "4", "--worker-class", "gthread", "--timeout", "900"]
