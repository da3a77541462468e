# ast_ds on GPUs: official PyTorch CUDA devel image (nvcc, for DeepSpeed's ops), DeepSpeed with its
# commonly used ops prebuilt, and this package.
#   docker build -t ast_ds .
#   docker run --gpus all --ipc=host -v /data:/data -v /models:/models -v $PWD/runs:/workspace/ast_ds/runs ast_ds \
#     deepspeed launchers/train.py --ds_config ds_configs/zero3.json --recipe llama2_7b \
#       --model.path /models/Llama-2-7b-hf --data.data_dir /data/redpajama_mds --out_dir runs/llama2_7b_24
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends git ninja-build pdsh openssh-client libaio-dev \
    && rm -rf /var/lib/apt/lists/*

# DeepSpeed after torch, without build isolation (its setup.py imports the installed torch), with the
# ops prebuilt so no rank JIT-compiles at start-up. TORCH_CUDA_ARCH_LIST covers V100..H100.
ARG TORCH_CUDA_ARCH_LIST="7.0;8.0;8.6;9.0"
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
RUN DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 DS_BUILD_AIO=1 \
    pip install --no-build-isolation "deepspeed>=0.16,<0.20" && ds_report

WORKDIR /workspace/ast_ds
COPY setup.py README.md ./
COPY ast_ds ./ast_ds
RUN pip install --no-build-isolation -e .
COPY . .

CMD ["python", "launchers/train.py", "--help"]
