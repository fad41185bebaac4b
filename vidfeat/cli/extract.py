"""``vidfeat extract OUTDIR -o FEATURES.h5``: cache backbone features of stored frames."""
from __future__ import annotations

import argparse

HELP = "cache pretrained-backbone features of an ingest OUTDIR's frames in one HDF5 file"


def _workers(text: str) -> int | None:
    return None if text == "auto" else int(text)


def _batch(text: str) -> int | None:
    return None if text == "auto" else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ingest_dir", metavar="OUTDIR", help="an ingest output folder")
    parser.add_argument("-o", "--output", required=True, metavar="FEATURES.h5",
                        help="feature file to write (reruns resume or skip)")
    parser.add_argument("--backbone", default="resnet50", help="see vidfeat.list_backbones()")
    parser.add_argument("--weights", default="DEFAULT",
                        help="DEFAULT | a torchvision weights name | none (random init) | PATH "
                             "to a local state dict")
    parser.add_argument("--batch-size", type=_batch, default="auto",
                        help="frames per batch (auto: 256 on CUDA, 64 on CPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto",
                        help="auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16")
    parser.add_argument("--decode", default="auto",
                        help="where JPEGs are decoded on CUDA: auto (cpu with >= 8 cores per "
                             "GPU, else gpu) | cpu (DataLoader workers) | gpu (nvjpeg); a CPU "
                             "device always decodes in workers")
    parser.add_argument("--workers", type=_workers, default="auto",
                        help="DataLoader worker processes (auto: on CUDA cores-2 with cpu "
                             "decode, 8 with gpu decode; cores/4 on CPU)")
    parser.add_argument("--dtype", default="float16", help="stored dtype: float16 | float32")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="extract slice I of N (whole videos); join with vidfeat merge")
    parser.add_argument("--gpus", default=None, metavar="all|I,J|cpu:N",
                        help="one shard per GPU (all, or visible indices), each in its own "
                             "process, merged into OUTPUT; cpu:N for N CPU shards")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing or unfinished output and start over")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from vidfeat.extract import extract

    extract(args.ingest_dir, args.output, backbone=args.backbone, weights=args.weights,
            batch_size=args.batch_size, device=args.device, precision=args.precision,
            workers=args.workers, dtype=args.dtype, shard=args.shard, overwrite=args.overwrite,
            progress=args.progress, gpus=args.gpus, decode=args.decode)
    return 0
