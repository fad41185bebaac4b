"""``vidfeat extract OUTDIR -o FEATURES.h5``: cache backbone features of stored frames."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import add_quiet, auto_or_int, choices, defaults, print_summary

HELP = "cache pretrained-backbone features of an ingest OUTDIR's frames in one HDF5 file"
POLICY = "vidfeat.extraction.defaults"  # the option tables extract checks against
LIBRARY = ("vidfeat.extraction._extract", "extract")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("ingest_dir", metavar="OUTDIR", help="an ingest output folder")
    parser.add_argument("-o", "--output", required=True, metavar="FEATURES.h5",
                        help="feature file to write (reruns resume or skip)")
    parser.add_argument("--backbone", default=d["backbone"],
                        help="a torchvision name (vidfeat.list_backbones()) or timm:<model> "
                             "(pip install 'vidfeat[timm]'); the video models r3d_18, mc3_18, "
                             "r2plus1d_18, s3d, mvit_v1_b, mvit_v2_s, swin3d_t/s/b give one row "
                             "per clip of a clip ingest (vidfeat ingest --clips-per-video K; "
                             "their weights' clip length and fps: "
                             "vidfeat backbones)")
    parser.add_argument("--weights", default=d["weights"],
                        help="DEFAULT | a torchvision weights name | none (random init) | PATH "
                             "to a local state dict")
    parser.add_argument("--batch-size", type=auto_or_int, default=d["batch_size"],
                        metavar="N|auto", help="frames per batch (default auto: 256 on CUDA, "
                                               "64 on CPU)")
    parser.add_argument("--device", default=d["device"],
                        choices=choices("vidfeat.system", "DEVICES"))
    parser.add_argument("--precision", default=d["precision"],
                        choices=("auto", *choices(POLICY, "PRECISIONS")),
                        help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--decode", default=d["decode"], choices=choices(POLICY, "DECODES"),
                        help="where JPEGs are decoded on CUDA: auto (cpu with >= 8 cores per "
                             "GPU, else gpu) | cpu (DataLoader workers) | gpu (nvjpeg); a CPU "
                             "device always decodes in workers")
    parser.add_argument("--loader-workers", dest="workers", type=auto_or_int,
                        default=d["workers"], metavar="N|auto",
                        help="DataLoader worker processes that decode frames (default auto: on "
                             "CUDA cores-2 with cpu decode, 8 with gpu decode; cores/4 on CPU)")
    parser.add_argument("--dtype", default=d["dtype"], choices=choices(POLICY, "DTYPES"),
                        help="stored dtype")
    parser.add_argument("--shard", default=d["shard"], metavar="I/N",
                        help="extract slice I of N (whole videos); join with vidfeat merge")
    parser.add_argument("--gpus", default=d["gpus"], metavar="all|I,J|cpu:N",
                        help="one shard per GPU (all, or visible indices), each in its own "
                             "process, merged into OUTPUT; cpu:N for N CPU shards")
    parser.add_argument("--compile", action="store_true", default=d["compile"],
                        help="torch.compile the backbone (the first batch compiles, tens of "
                             "seconds; inductor's cache speeds later runs): faster on a GPU, "
                             "features equal eager ones to within the precision's rounding")
    parser.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                        help="discard an existing or unfinished output and start over")
    add_quiet(parser, d["progress"])


def run(args: argparse.Namespace) -> int:
    from vidfeat.extraction import extract

    result = extract(
        args.ingest_dir, args.output, backbone=args.backbone, weights=args.weights,
        batch_size=args.batch_size, device=args.device, precision=args.precision,
        workers=args.workers, dtype=args.dtype, shard=args.shard, overwrite=args.overwrite,
        progress=args.progress, gpus=args.gpus, decode=args.decode, compile=args.compile)
    print_summary(args, result)
    return 0
