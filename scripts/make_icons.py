"""Generate the Teams app icons: appPackage/color.png (192x192) and appPackage/outline.png (32x32).

Teams requires a full-colour 192x192 icon and a 32x32 outline icon that is white on a transparent
background. Both show a bell. Run: ``python scripts/make_icons.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
ACCENT = (79, 107, 237, 255)  # #4F6BED, also the manifest accentColor
WHITE = (255, 255, 255, 255)


def _bell(draw: ImageDraw.ImageDraw, size: int, fill: tuple[int, int, int, int]) -> None:
    """Draw a bell centred in a size x size canvas, scaled from a 32-unit design grid."""

    def s(v: float) -> float:
        return v * size / 32

    # Dome and body.
    draw.ellipse([s(9), s(5), s(23), s(19)], fill=fill)
    draw.polygon([(s(9), s(12)), (s(23), s(12)), (s(26), s(23)), (s(6), s(23))], fill=fill)
    # Rim.
    draw.rounded_rectangle([s(4), s(22), s(28), s(25)], radius=s(1.5), fill=fill)
    # Clapper and handle.
    draw.ellipse([s(13), s(25), s(19), s(29)], fill=fill)
    draw.ellipse([s(14.5), s(3), s(17.5), s(6)], fill=fill)


def make_color(path: Path) -> None:
    size = 192
    img = Image.new("RGBA", (size, size), ACCENT)
    inner = 112
    glyph = Image.new("RGBA", (inner, inner), (0, 0, 0, 0))
    _bell(ImageDraw.Draw(glyph), inner, WHITE)
    offset = (size - inner) // 2
    img.alpha_composite(glyph, (offset, offset))
    img.save(path, format="PNG")


def make_outline(path: Path) -> None:
    size = 32
    # Draw at 8x and downsample for smooth edges; keep pure white colour, alpha carries the shape.
    big = Image.new("RGBA", (size * 8, size * 8), (255, 255, 255, 0))
    _bell(ImageDraw.Draw(big), size * 8, WHITE)
    img = big.resize((size, size), Image.Resampling.LANCZOS)
    alpha = img.getchannel("A")
    out = Image.new("RGBA", (size, size), (255, 255, 255, 0))
    out.putalpha(alpha)
    out.save(path, format="PNG")


def main() -> None:
    out_dir = ROOT / "appPackage"
    out_dir.mkdir(exist_ok=True)
    make_color(out_dir / "color.png")
    make_outline(out_dir / "outline.png")
    print(f"wrote {out_dir / 'color.png'} and {out_dir / 'outline.png'}")


if __name__ == "__main__":
    main()
