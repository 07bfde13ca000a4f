"""The evaluation report: `Report` holds the JSON document (schema in docs/evaluate-report.md)
and the thumbnails, and renders the Markdown summary the CLI prints, report.md and report.html
from that document alone."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import save_image
from ..utils import atomic_path


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _with_interval(v, iv, signed: bool = False) -> str:
    """`14.9 [12.1, 17.6]` (percent points), `+2.3 [-1.0, 5.5]` for differences."""
    if v is None:
        return "—"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    s = fmt.format(100 * v)
    return s + (f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]" if iv else "")


def _reading(c: dict) -> str:
    iv = c["miou"]["interval"]
    if c["baseline"] == "real":
        r, ri = c["miou"]["ratio"], c["miou"]["ratio_interval"]
        if r is None:
            return "—"
        return f"{100 * r:.0f} % of the real mIoU" + (f" [{100 * ri[0]:.0f}, {100 * ri[1]:.0f}]" if ri else "")
    if not iv:
        return "too few layouts for an interval"
    if iv[0] > 0:
        return f"{c['model']} higher mIoU"
    if iv[1] < 0:
        return f"{c['baseline']} higher mIoU"
    return "no clear mIoU difference (interval contains 0)"


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_cell(c: str, tag: str) -> str:
    return f"<{tag}>{html.escape(c)}</{tag}>"


def _html_table(head, rows) -> str:
    h = "".join(_html_cell(c, "th") for c in head)
    body = "".join("<tr>" + "".join(_html_cell(c, "td") for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass
class Report:
    """What `evaluate` returns. `data` is the JSON document (``report["segmentation"]`` reads it);
    `thumbs` maps a layout stem to {"layout" | column name: uint8 image}."""

    data: dict
    thumbs: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.data[key]

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.data["columns"]]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, allow_nan=False)

    # ------------------------------------------------------------------ text
    def _col_head(self, c: str) -> str:
        return c + (" (ceiling)" if c == "real" and self._has_real() else "")

    def _has_real(self) -> bool:
        return any(c["kind"] == "real" for c in self.data["columns"])

    def headline(self) -> list[str]:
        """One line per column: `name: mIoU 14.9 [12.1, 17.6], pixel accuracy 57.2 [55.0, 59.3]`."""
        out = []
        for c in self.columns:
            s = self.data["segmentation"][c]
            iv = s["intervals"]
            out.append(
                f"{self._col_head(c)}: mIoU {_with_interval(s['miou'], iv['miou'])}, pixel accuracy "
                f"{_with_interval(s['pixel_accuracy'], iv['pixel_accuracy'])} ({s['layouts']} layouts)"
            )
        return out

    def _protocol_lines(self) -> list[str]:
        d = self.data
        p, i = d["protocol"], d["inputs"]
        seg = p["segmenter"]
        res = p["segmentation_resolution"]
        out = [f"- layouts: `{i['labels']}` ({i['label_space']}), {i['layouts']} evaluated"]
        for m, info in i["models"].items():
            out.append(
                f"- {m}: `{info['folder']}`, {info['images']} images "
                f"(variants per layout: {info['variants_per_layout']})"
            )
        if i["real"]:
            out.append(f"- real: `{i['real']}`, {i['real_photos']} photos")
        out.append(
            f"- segmenter: {seg['name']} at {'×'.join(map(str, res)) if isinstance(res, list) else res} "
            f"(H×W); device {d['device']}, {d.get('precision', 'fp32')}; time {d['timing_s'].get('total')} s"
        )
        ld = p["label_decoding"]
        out.append(
            f"- label decoding: {ld['label_space']}, encoding {ld['encoding']}"
            + (f"; {ld['polegroup_note']}" if ld.get("polegroup_note") else "")
        )
        ca = p["classes_averaged"]
        out.append(
            f"- mIoU averages over the {len(ca['classes'])} classes present in the layouts "
            f"({', '.join(ca['classes'])}); the second mIoU row also counts classes only predicted"
        )
        for n in p["distance_networks"]:
            out.append(f"- distances: {n['name']}, images at {'×'.join(map(str, p['distance_resolution']))} (H×W)")
        b = p["bootstrap"]
        out.append(
            f"- intervals: {100 * b['level']:.0f} % percentile bootstrap over layouts, {b['resamples']} "
            f"resamples, seed {b['seed']}"
        )
        return out

    def _summary_rows(self) -> tuple[list[str], list[list[str]]]:
        d = self.data
        cols = self.columns
        seg = d["segmentation"]
        sname = d["protocol"]["segmenter"]["name"]

        def srow(label, key):
            return [label] + [_with_interval(seg[c][key], seg[c]["intervals"][key]) for c in cols]

        rows = [
            srow(f"mIoU % ({sname}, classes in layouts)", "miou"),
            srow("mIoU % (classes in layouts or predicted)", "miou_union"),
            srow("pixel accuracy %", "pixel_accuracy"),
            srow("mean class accuracy %", "mean_class_accuracy"),
        ]
        to_real = {c["model"]: c for c in d["comparisons"] if c["baseline"] == "real"}
        if to_real:
            row = ["mIoU as % of the real photos'"]
            for c in cols:
                m = to_real.get(c, {}).get("miou", {})
                r, ri = m.get("ratio"), m.get("ratio_interval")
                row.append(
                    "100"
                    if c == "real"
                    else "—"
                    if r is None
                    else f"{100 * r:.0f}" + (f" [{100 * ri[0]:.0f}, {100 * ri[1]:.0f}]" if ri else "")
                )
            rows.append(row)
        for dist in d["distribution"]:
            floor = dist.get("real_split_half")
            short = "FID" if dist["standard"] else f"FD-{dist['key']} (non-standard)"
            kshort = "KID ×1000" if dist["standard"] else f"KID-{dist['key']} (non-standard)"
            scale = 1000 if dist["standard"] else 1
            if floor is None:
                rows.append([short] + ["—"] * len(cols))
                continue
            m, s = dist["n_per_set"], dist["kid_subset_size"]
            splits = f"{dist['draws']} splits of {dist['layouts']} layouts"
            fd_row, kid_row = [f"{short}, mean ± sd over {splits}"], [f"{kshort}, mean ± sd over {splits}"]
            for c in cols:
                e = floor if c == "real" else dist["models"].get(c)
                tag = ", split halves" if c == "real" else ""
                if e is None:
                    fd_row.append("—")
                    kid_row.append("—")
                    continue
                fd_row.append(f"{e['fd']:.1f} ± {e['fd_std']:.1f} ({m} vs {m}{tag})")
                k = e["kid"]
                kid_row.append(f"{scale * k['mean']:.3g} ± {scale * k['std']:.2g} ({s} vs {s}{tag})")
            if not dist["fd_reliable"]:
                fd_row[0] += " — n too small, see note"
            rows += [fd_row, kid_row] if dist["fd_reliable"] else [kid_row, fd_row]
        div = d.get("diversity")
        if div:
            net = div["network"].split()[0]
            rows.append(
                [f"diversity (within layout, {net})"]
                + [
                    (
                        "n/a (one photo per layout)"
                        if c == "real"
                        else "—"
                        if div["models"].get(c, {}).get("mean") is None
                        else f"{div['models'][c]['mean']:.4f} ({div['models'][c]['layouts']} layouts)"
                    )
                    for c in cols
                ]
            )
            btw = div.get("between_layouts") or {}
            if any(v is not None for v in btw.values()):
                rows.append(
                    [f"distance between different layouts (reference, {div['between_layouts_pairs']} pairs)"]
                    + ["—" if btw.get(c) is None else f"{btw[c]:.4f}" for c in cols]
                )
        return ["metric"] + [self._col_head(c) for c in cols], rows

    def _comparison_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["comparison (same layouts)", "layouts", "Δ mIoU (points)", "Δ pixel accuracy (points)", "reading"]
        rows = []
        for c in self.data["comparisons"]:
            rows.append(
                [
                    f"{c['model']} − {c['baseline']}",
                    str(c["layouts"]),
                    _with_interval(c["miou"]["diff"], c["miou"]["interval"], signed=True),
                    _with_interval(c["pixel_accuracy"]["diff"], c["pixel_accuracy"]["interval"], signed=True),
                    _reading(c),
                ]
            )
        return head, rows

    def _class_rows(self) -> tuple[list[str], list[list[str]]]:
        cols = self.columns
        seg = self.data["segmentation"]
        deltas = [
            c
            for c in self.data["comparisons"]
            if c["baseline"] != "real" and c["baseline"] == (cols[0] if cols else None)
        ]
        names = list(seg[cols[0]]["per_class_iou"])
        rows = []
        for n in names:
            vals = [seg[c]["per_class_iou"][n] for c in cols]
            if all(v is None for v in vals):
                continue
            row = [n] + [
                _with_interval(seg[c]["per_class_iou"][n], seg[c]["intervals"]["per_class_iou"][n]) for c in cols
            ]
            row += [
                _with_interval(c["per_class_iou"][n]["diff"], c["per_class_iou"][n]["interval"], signed=True)
                for c in deltas
            ]
            rows.append(row)
        head = ["class IoU %"] + list(cols) + [f"{c['model']} − {c['baseline']}" for c in deltas]
        return head, rows

    def _notes(self) -> list[str]:
        d = self.data
        notes = [
            "mIoU over the classes present in the layouts (the definition behind the quoted ESPNet "
            "accuracies); pixels that are void in the layout are ignored, void predictions count as errors.",
            "[a, b]: 95 % bootstrap interval over layouts; a paired comparison resamples the same layouts for "
            "both columns, so an interval of the difference that excludes 0 is a difference these layouts "
            "support. Neighbouring video frames are not independent layouts: with them the intervals are "
            "too narrow.",
        ]
        if d["distribution"]:
            notes.append(
                "FD/KID are taken between sets of the same size: the layouts with a real photo are split "
                "into random disjoint halves A and B; the real column (the floor) is FD(real A, real B), "
                "a model's is FD(its images of A, one variant each, real B); mean ± sd over the splits. "
                "Non-standard distances use networks available here and are NOT comparable to "
                "published FIDs."
            )
            for dist in d["distribution"]:
                notes.append(
                    f"{dist['name']}: "
                    + (
                        dist["note"]
                        or f"{dist['n_per_set']} images per set, at least the {dist['dims']} feature dimensions."
                    )
                )
        if d.get("diversity"):
            notes.append("Diversity: " + d["diversity"]["definition"] + f" ({d['diversity']['network']}).")
        notes += [f"warning: {w}" for w in d.get("warnings", [])]
        return notes

    def summary_markdown(self) -> str:
        """What `semsynth evaluate` prints: inputs and protocol, headline, summary and comparisons."""
        head, rows = self._summary_rows()
        md = [
            "# semsynth evaluation",
            "",
            *self._protocol_lines(),
            "",
            *[f"**{h}**  " for h in self.headline()],
            "",
            "## Summary",
            "",
            _md_table(head, rows),
            "",
        ]
        if self.data["comparisons"]:
            md += ["## Paired comparisons", "", _md_table(*self._comparison_rows()), ""]
        md += [f"- {n}" for n in self._notes()]
        return "\n".join(md)

    # ------------------------------------------------------------------ files
    def _write_thumbs(self, out_dir: Path) -> list[tuple[str, dict[str, str]]]:
        written = []
        for stem, row in self.thumbs.items():
            cells = {}
            for col, arr in row.items():
                p = out_dir / "thumbs" / _safe(stem) / f"{_safe(col)}.png"
                save_image(p, np.ascontiguousarray(arr[..., :3]))
                cells[col] = p.relative_to(out_dir).as_posix()
            written.append((stem, cells))
        return written

    def write(self, out_dir) -> dict[str, Path]:
        """report.json, report.md, report.html (each atomic) and thumbs/<layout>/<column>.png."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}
        with atomic_path(paths["json"]) as tmp:
            tmp.write_text(self.to_json())
        thumbs = self._write_thumbs(out_dir)
        cols = ["layout"] + self.columns
        chead, crows = self._class_rows()

        md = [self.summary_markdown(), "", "## Per-class IoU", "", _md_table(chead, crows), ""]
        if thumbs:
            md += [
                "## Examples",
                "",
                "Each cell: up to 3 variants, the segmenter's reading of the first below.",
                "",
                _md_table(
                    ["layout stem"] + cols,
                    [[s] + [f"![{c}]({cells[c]})" if c in cells else "—" for c in cols] for s, cells in thumbs],
                ),
                "",
            ]
        with atomic_path(paths["md"]) as tmp:
            tmp.write_text("\n".join(md))

        style = (
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}"
            "td:first-child,th:first-child{text-align:left}td img{max-height:260px}"
        )
        shead, srows = self._summary_rows()
        body = [
            "<h1>semsynth evaluation</h1><ul>"
            + "".join(
                "<li>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(s[2:])) + "</li>"
                for s in self._protocol_lines()
            )
            + "</ul>",
            "<p>" + "<br>".join(f"<b>{html.escape(h)}</b>" for h in self.headline()) + "</p>",
            "<h2>Summary</h2>",
            _html_table(shead, srows),
        ]
        if self.data["comparisons"]:
            body += ["<h2>Paired comparisons</h2>", _html_table(*self._comparison_rows())]
        body += [
            "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in self._notes()) + "</ul>",
            "<h2>Per-class IoU</h2>",
            _html_table(chead, crows),
        ]
        if thumbs:
            head = "".join(_html_cell(c, "th") for c in ["layout stem"] + cols)
            trs = "".join(
                "<tr>"
                + _html_cell(s, "td")
                + "".join(
                    f'<td><img src="{html.escape(cells[c])}" alt="{html.escape(s)} {html.escape(c)}"></td>'
                    if c in cells
                    else "<td>—</td>"
                    for c in cols
                )
                + "</tr>"
                for s, cells in thumbs
            )
            body += [
                "<h2>Examples</h2><p>Each cell: up to 3 variants, the segmenter's reading of the first below.</p>",
                f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>",
            ]
        page = (
            f'<!doctype html><html><head><meta charset="utf-8"><title>semsynth evaluation</title>'
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
        )
        with atomic_path(paths["html"]) as tmp:
            tmp.write_text(page)
        return paths


def write_report(report: Report, out_dir) -> dict[str, Path]:
    """`report.write(out_dir)`: report.json, report.md, report.html and the thumbnails."""
    return report.write(out_dir)
