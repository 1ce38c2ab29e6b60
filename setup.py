from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="seo_dist",
    version="0.1.0",
    description="Distributed LLM training for the SEO engine: DeepSpeed ZeRO, experiment tracking, "
    "async hash-validated checkpoints, profiling",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["seo_dist", "seo_dist.*"]),
    package_data={"seo_dist.data": ["corpus/*.jsonl.gz"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=4.45",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "tensorboard>=2.14",
        "wandb>=0.17",
        "nvidia-ml-py>=12",
        "psutil>=5.9",
        "pyyaml>=6",
        "pydantic>=2",
        "tqdm>=4.66",
        "numpy>=1.24",
        "xxhash>=3.4",
        "blake3>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "ruff==0.17.6", "mypy==2.4.1"],
        "mlflow": ["mlflow>=3.0"],
    },
    entry_points={"console_scripts": ["seo-dist=seo_dist.cli:main"]},
)
