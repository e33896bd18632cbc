"""The Markdown tables of a ``python -m benchmarks.run`` report, as in docs/speed.md."""


def markdown_tables(report: dict) -> str:
    """The report's figures as the Markdown tables of docs/speed.md."""
    lines = []

    def table(header, rows):
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        lines.append("")

    if "inference" in report:
        table(
            [
                "model",
                "regime",
                "batch",
                "precision",
                "ssd_d2 ms",
                "torchvision ms",
                "ratio",
                "ssd_d2 img/s",
                "detections (ssd_d2 / tv)",
            ],
            [
                [
                    r["model"],
                    r["regime"],
                    r["batch"],
                    r["precision"],
                    f"{r['ssd_d2_ms']:.1f}",
                    f"{r['torchvision_ms']:.1f}",
                    f"{r['ratio']:.2f}",
                    f"{r['ssd_d2_images_per_s']:.1f}",
                    f"{r['detections']['ssd_d2']} / {r['detections']['torchvision']}",
                ]
                for r in report["inference"]
                if r["precision"] != "bf16"
            ],
        )
    if "breakdown" in report:
        stages = ["preprocess", "backbone", "head", "decode", "nms"]
        table(
            ["model", "regime (batch 8)", "total ms"] + stages + ["decode + NMS"],
            [
                [r["model"], r["regime"], f"{r['total_ms']:.1f}"]
                + [f"{100 * r[f'{k}_share']:.1f}%" for k in stages]
                + [f"{100 * r['postprocess_share']:.1f}%"]
                for r in report["breakdown"]
            ],
        )
    if "train" in report:
        table(
            ["training step, SSD300 batch 8", "ssd_d2 ms", "torchvision ms", "ratio"],
            [
                [
                    r["precision"],
                    f"{r['ssd_d2_ms']:.0f}",
                    f"{r['torchvision_ms']:.0f}",
                    f"{r['ratio']:.2f}",
                ]
                for r in report["train"]
                if r["precision"] != "bf16"
            ],
        )
    if "compile" in report:
        table(
            ["demo training step, batch 8", "eager ms", "compiled ms", "compile s", "break-even"],
            [
                [
                    f"{r['precision']}, {r['threads']} thread(s)",
                    f"{r['eager_ms']:.0f}",
                    f"{r['compiled_ms']:.0f}",
                    f"{r['compile_s']:.0f}",
                    "never" if r["break_even"] is None else f"{r['break_even']} iterations",
                ]
                for r in report["compile"]
            ],
        )
    bf16_header = ["ssd_d2 bf16 ms", "ssd_d2 fp32 ms", "torchvision bf16 ms", "torchvision fp32 ms"]
    bf16_header += ["ratio vs tv bf16", "vs tv fp32", "vs ssd_d2 fp32"]

    def bf16_cells(r, digits):
        times = ["ssd_d2", "ssd_d2_fp32", "torchvision", "torchvision_fp32"]
        ratios = ["ratio", "ratio_vs_torchvision_fp32", "ratio_vs_ssd_d2_fp32"]
        return [f"{r[f'{k}_ms']:.{digits}f}" for k in times] + [f"{r[k]:.2f}" for k in ratios]

    bf16_rows = [r for r in report.get("inference", []) if r["precision"] == "bf16"]
    if bf16_rows:
        table(
            ["model", "regime", "batch"] + bf16_header + ["detections bf16 (ssd_d2 / tv)"],
            [
                [r["model"], r["regime"], r["batch"]]
                + bf16_cells(r, 1)
                + [f"{r['detections']['ssd_d2']} / {r['detections']['torchvision']}"]
                for r in bf16_rows
            ],
        )
    bf16_rows = [r for r in report.get("train", []) if r["precision"] == "bf16"]
    if bf16_rows:
        table(
            ["training step, SSD300 batch 8"] + bf16_header,
            [["bf16"] + bf16_cells(r, 0) for r in bf16_rows],
        )
    if "bf16_detections" in report:
        agreement = report["bf16_detections"]
        if "skipped" in agreement:
            lines.extend(
                [f"bf16 detections of the demo model: skipped ({agreement['skipped']})", ""]
            )
        else:
            table(
                [
                    f"demo model, {agreement['rows'][0]['images']} images of "
                    f"{agreement['dataset']}, score >=",
                    "fp32 detections",
                    "bf16 detections",
                    f"fp32 ones matched in bf16 (same class, IoU >= {agreement['iou_thresh']})",
                    "max score difference",
                ],
                [
                    [
                        r["score_thresh"],
                        r["fp32_detections"],
                        r["bf16_detections"],
                        f"{r['matched']} ({100 * r['matched_share']:.1f}%)",
                        f"{r['max_score_diff']:.4f}",
                    ]
                    for r in agreement["rows"]
                ],
            )
    if "data" in report:
        table(
            ["data pipeline (500x375 JPEGs, full SSD augmentation)", "images/s"],
            [[k, f"{v:.0f}"] for k, v in report["data"].items() if k != "threads"],
        )
    if "memory" in report:
        table(
            ["peak memory, SSD300 training", "batch", "precision", "ssd_d2 MiB", "torchvision MiB"],
            [
                [r["kind"], r["batch"], r["precision"]]
                + [f"{r[f'{model}_peak_mib']:.0f}" for model in ("ssd_d2", "torchvision")]
                for r in report["memory"]
            ],
        )
    if "scaling_batch" in report:
        table(
            ["SSD300 inference, batch", "ms", "ms per image"],
            [
                [r["batch"], f"{r['ms']:.1f}", f"{r['ms_per_image']:.1f}"]
                for r in report["scaling_batch"]
            ],
        )
        table(
            ["evaluation of the demo model, images", "seconds"],
            [[r["images"], f"{r['seconds']:.1f}"] for r in report["scaling_eval"]],
        )
    return "\n".join(lines)
