from setuptools import find_packages, setup

setup(
    name="diffusers-mpdit",
    version="0.1.0",
    description="MPDiT (Dao and Metaxas, CVPR 2026), a multi-patch global-to-local diffusion transformer, for diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    # The model-card templates live at the top level (hub_cards/) and install as diffusers_mpdit.hub_cards.
    package_dir={"": "src", "diffusers_mpdit.hub_cards": "hub_cards"},
    packages=[*find_packages("src"), "diffusers_mpdit.hub_cards"],
    package_data={
        "diffusers_mpdit": [
            "data/*.json",
            "bundled/*/*.json",
            "bundled/*/*.md",
            "bundled/*/*.sh",
            "bundled/*/*/*.json",
            "bundled/*/*/*.safetensors",
            "bundled/*/*/*.png",
        ],
        "diffusers_mpdit.hub_cards": ["*.md"],
    },
    python_requires=">=3.10",
    # torch is a requirement, but install it first yourself: a bare `torch` from PyPI is a multi-GB CUDA build.
    install_requires=[
        "torch>=2.5",
        "diffusers>=0.42.1,<0.43",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=0.34",
        "numpy>=1.24",
        "Pillow>=9.0",
        "jinja2>=3.1",
        "tqdm>=4.60",
    ],
    extras_require={
        # LoRA (load_lora_weights, LoRA training) needs peft, which imports transformers.
        "lora": ["peft>=0.17", "transformers>=4.41"],
        "train": ["datasets>=3.0", "tensorboard>=2.14", "peft>=0.17", "transformers>=4.41"],
        "demo": ["gradio>=5.0"],
        "xformers": ["xformers>=0.0.28"],
        # Quantized loading (TorchAoConfig, QuantoConfig); bitsandbytes and fp8 need a GPU and are not listed.
        "quant": ["torchao>=0.10", "optimum-quanto>=0.2"],
        "dev": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "scipy>=1.10",
            "PyYAML>=6.0",
            "playwright>=1.40",
            "matplotlib>=3.7",
            "gradio_client>=1.0",
            # examples/prepare_digits.py and the LoRA benchmark read its handwritten digits.
            "scikit-learn>=1.3",
        ],
    },
    entry_points={"console_scripts": ["mpdit = diffusers_mpdit.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
