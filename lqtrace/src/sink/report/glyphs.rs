//! Text in the PNG plots, placed right.
//!
//! plotters 0.3.7 rasterizes text with ab_glyph (`plotters/src/style/font/ab_glyph.rs`,
//! `FontDataInternal::draw`, unchanged on its master branch) and places each glyph's bitmap
//! wrongly:
//! - horizontally at the pen position, ignoring the glyph's own offset inside its advance (the
//!   outline's `px_bounds().min.x`, its left side bearing): DejaVu Sans at 13 px has 1 px for
//!   digits and `.`, 0 for most letters and -1 for `_`, so glyphs shift against their
//!   neighbours: `syn _accept`, `drop s / s`, `limit 1 6`;
//! - vertically at `size / 2 + px_bounds().min.y`, truncated toward zero (`as i32`), so a glyph
//!   reaching above that line (a digit: -2.5 → -2) is rounded down and a small one below it (a
//!   `.`: 4.5 → 4) up: the dot sits a pixel or two above the baseline, `127·0·0·1`.
//!
//! [`Glyphs`] wraps a drawing backend and draws text itself: each glyph positioned at its pen
//! position on a common baseline (`ab_glyph::Glyph::position`), outlined, and every pixel put
//! at the outline's pixel bounds plus its offset, as ab_glyph intends; the text box is the font's
//! ascent to descent. Everything else goes to the wrapped backend unchanged. The SVG plots do not
//! need it: a browser lays their `<text>` out.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontStyle,
    text_anchor::{HPos, VPos},
};

fn font(style: FontStyle) -> Option<FontRef<'static>> {
    let bytes = match style {
        FontStyle::Bold => dejavu::sans::bold(),
        _ => dejavu::sans::regular(),
    };
    FontRef::try_from_slice(bytes).ok()
}

/// A line of text laid out from the top left of its box: pen positions on one baseline.
struct Layout {
    glyphs: Vec<ab_glyph::Glyph>,
    width: f32,
    height: f32,
}

fn layout(font: &FontRef<'static>, size: f64, text: &str) -> Layout {
    // plotters' sizes are ab_glyph pixel scales (ascent - descent), as its own renderer uses.
    let scale = PxScale::from(size as f32);
    let f = font.as_scaled(scale);
    let baseline = f.ascent();
    let mut x = 0.0f32;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            x += f.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(scale, point(x, baseline)));
        x += f.h_advance(id);
        prev = Some(id);
    }
    Layout {
        glyphs,
        width: x,
        height: f.ascent() - f.descent(),
    }
}

/// A backend whose text is drawn by [`Layout`]; see the module comment.
pub struct Glyphs<B>(pub B);

impl<B: DrawingBackend> DrawingBackend for Glyphs<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        match font(style.style()) {
            Some(f) => {
                let l = layout(&f, style.size(), text);
                Ok((l.width.ceil() as u32, l.height.ceil() as u32))
            }
            None => self.0.estimate_text_size(text, style),
        }
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let Some(font) = font(style.style()) else {
            return self.0.draw_text(text, style, pos);
        };
        let l = layout(&font, style.size(), text);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Right => -l.width,
            HPos::Center => -l.width / 2.0,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -l.height / 2.0,
            VPos::Bottom => -l.height,
        };
        let (dx, dy) = (dx.round() as i32, dy.round() as i32);
        let trans = style.transform();
        let (w, h) = self.get_size();
        let mut pixels = Vec::new();
        for g in l.glyphs {
            let Some(outline) = font.outline_glyph(g) else {
                continue; // a space
            };
            let b = outline.px_bounds();
            let (x0, y0) = (b.min.x as i32, b.min.y as i32);
            outline.draw(|x, y, coverage| {
                pixels.push((x0 + x as i32 + dx, y0 + y as i32 + dy, coverage));
            });
        }
        for (x, y, coverage) in pixels {
            let (x, y) = trans.transform(x, y);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if coverage > 0.0 && x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                self.0.draw_pixel(
                    (x, y),
                    BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    },
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use plotters::prelude::*;
    use plotters_backend::text_anchor::Pos;

    use super::*;

    /// Records the pixels drawn with more than half coverage.
    #[derive(Default)]
    struct Ink(Vec<(i32, i32)>);

    impl DrawingBackend for Ink {
        type ErrorType = std::io::Error;
        fn get_size(&self) -> (u32, u32) {
            (400, 100)
        }
        fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<std::io::Error>> {
            Ok(())
        }
        fn present(&mut self) -> Result<(), DrawingErrorKind<std::io::Error>> {
            Ok(())
        }
        fn draw_pixel(
            &mut self,
            p: BackendCoord,
            c: BackendColor,
        ) -> Result<(), DrawingErrorKind<std::io::Error>> {
            if c.alpha > 0.5 {
                self.0.push(p);
            }
            Ok(())
        }
    }

    fn style() -> TextStyle<'static> {
        sized(13.0)
    }

    fn sized(px: f64) -> TextStyle<'static> {
        TextStyle::from((super::super::plots::FONT, px).into_font())
    }

    /// The ink of `text` at 13 px, drawn at (10, 10) from its top left.
    fn ink(text: &str) -> Vec<(i32, i32)> {
        ink_at(text, 13.0)
    }

    fn ink_at(text: &str, px: f64) -> Vec<(i32, i32)> {
        let mut g = Glyphs(Ink::default());
        g.draw_text(text, &sized(px), (10, 10)).unwrap();
        g.0.0
    }

    /// Where the ink of each glyph of `text` should start (from x = 10): its pen position plus
    /// its left side bearing, floored; and the pen position after the last glyph.
    fn expected(text: &str) -> (Vec<i32>, f32) {
        expected_at(text, 13.0)
    }

    fn expected_at(text: &str, px: f32) -> (Vec<i32>, f32) {
        let f = font(FontStyle::Normal).unwrap();
        let s = f.as_scaled(PxScale::from(px));
        let mut x = 10.0f32;
        let mut prev = None;
        let starts = text
            .chars()
            .map(|c| {
                let id = s.glyph_id(c);
                if let Some(p) = prev {
                    x += s.kern(p, id);
                }
                prev = Some(id);
                let at = (x + s.h_side_bearing(id)).floor() as i32;
                x += s.h_advance(id);
                at
            })
            .collect();
        (starts, x)
    }

    fn columns(px: &[(i32, i32)], cols: std::ops::Range<i32>) -> Vec<(i32, i32)> {
        px.iter()
            .copied()
            .filter(|(x, _)| cols.contains(x))
            .collect()
    }

    #[test]
    fn dots_sit_on_the_baseline() {
        let px = ink("1.1");
        let (starts, _) = expected("1.1");
        let bottom = |cols| columns(&px, cols).iter().map(|p| p.1).max().unwrap();
        assert_eq!(
            bottom(starts[1]..starts[2]),
            bottom(starts[0]..starts[1]),
            "the dot ends on the digits' baseline: {px:?}"
        );
        // Inside its own advance: one pixel in (its left side bearing), not against the `1`.
        let dot_left = columns(&px, starts[1] - 1..starts[2])
            .iter()
            .map(|p| p.0)
            .min();
        assert_eq!(dot_left, Some(starts[1]), "{px:?}");
    }

    #[test]
    fn each_glyph_starts_at_its_own_bearing() {
        // At 40 px the bearings are large (`1`: 3.8 px, `.`: 3.7 px, `_`: -0.3 px): a glyph
        // drawn at its pen position instead would be off by up to 4 px.
        let text = "n_1.1";
        let px = ink_at(text, 40.0);
        let (starts, end) = expected_at(text, 40.0);
        for (i, c) in text.chars().enumerate() {
            let to = starts.get(i + 1).copied().unwrap_or(end as i32 + 1);
            // Columns this glyph alone covers (its neighbours' ink may overlap by a pixel).
            let left = if c == '_' {
                // Under the `n`'s last column: the underscore is the ink below the baseline.
                let base = columns(&px, starts[0]..starts[1])
                    .iter()
                    .map(|p| p.1)
                    .max()
                    .unwrap();
                px.iter().filter(|(_, y)| *y > base).map(|p| p.0).min()
            } else {
                columns(&px, starts[i] - 1..to).iter().map(|p| p.0).min()
            };
            let left = left.unwrap_or_else(|| panic!("no ink for {c:?}"));
            assert!(
                (starts[i]..=starts[i] + 1).contains(&left),
                "{c:?} starts at {left}, its bearing puts it at {}",
                starts[i]
            );
        }
    }

    #[test]
    fn text_box_and_anchors() {
        let g = Glyphs(Ink::default());
        let (w, h) = g.estimate_text_size("127.0.0.1:8080", &style()).unwrap();
        assert_eq!(w, (expected("127.0.0.1:8080").1 - 10.0).ceil() as u32);
        let f = font(FontStyle::Normal).unwrap();
        let scaled = f.as_scaled(PxScale::from(13.0));
        assert_eq!(
            h,
            (scaled.ascent() - scaled.descent()).ceil() as u32,
            "ascent to descent"
        );
        let mut g = Glyphs(Ink::default());
        let centered = style().pos(Pos::new(HPos::Center, VPos::Center));
        g.draw_text("xx", &centered, (100, 20)).unwrap();
        let xs: Vec<i32> = g.0.0.iter().map(|p| p.0).collect();
        let (min, max) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        assert!((min + max - 200).abs() <= 2, "{min}..{max} around 100");
        // Rotated (the y axis' description): drawn upwards from the anchor.
        let mut g = Glyphs(Ink::default());
        g.draw_text(
            "drops",
            &style().transform(FontTransform::Rotate270),
            (20, 100),
        )
        .unwrap();
        assert!(g.0.0.iter().all(|p| p.1 <= 100 && p.0 >= 20), "{:?}", g.0.0);
    }
}
