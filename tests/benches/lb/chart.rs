//! Grouped bar charts of the benchmark figures, drawn as SVG with plotters.

use std::path::Path;

use plotters::{
    coord::{ranged1d::ValueFormatter, types::RangedCoordusize},
    prelude::*,
};

/// Bars of each series side by side in each group.
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    /// One label per group of bars (x axis).
    pub groups: Vec<String>,
    /// (name, one value per group).
    pub series: Vec<(String, Vec<f64>)>,
    /// A logarithmic y axis, for figures that span orders of magnitude.
    pub log_y: bool,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

impl BarChart {
    pub fn draw(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let values = || self.series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| *v > 0.0);
        let max = values().fold(0.0, f64::max).max(1e-9);
        let min = values().fold(max, f64::min);
        let slots = self.series.len() + 1;
        let width = self.groups.len() * slots;
        let groups = &self.groups;
        let label = |x: &usize| {
            let (group, slot) = (x / slots, x % slots);
            if slot == slots / 2 { groups.get(group).cloned().unwrap_or_default() } else { String::new() }
        };
        let mut builder = ChartBuilder::on(&root);
        builder.caption(&self.title, ("sans-serif", 20)).margin(12).x_label_area_size(36).y_label_area_size(70);
        if self.log_y {
            let floor = min / 2.0;
            let chart = builder.build_cartesian_2d(0usize..width, (floor..max * 2.0).log_scale())?;
            self.finish(chart, width, slots, floor, &label)?;
        } else {
            let chart = builder.build_cartesian_2d(0usize..width, 0.0..max * 1.15)?;
            self.finish(chart, width, slots, 0.0, &label)?;
        }
        root.present()?;
        Ok(())
    }

    /// The axes, each series' bars from `base` up, and the legend.
    fn finish<'a, DB: DrawingBackend + 'a, Y>(
        &self,
        mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordusize, Y>>,
        width: usize,
        slots: usize,
        base: f64,
        label: &dyn Fn(&usize) -> String,
    ) -> anyhow::Result<()>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
        DB::ErrorType: 'static,
    {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(&self.y_label)
            .x_labels(width)
            .x_label_formatter(label)
            .draw()
            .map_err(|e| anyhow::anyhow!("drawing the axes: {e}"))?;
        for (s, (name, values)) in self.series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            chart
                .draw_series(values.iter().enumerate().map(|(g, v)| {
                    let x = g * slots + s;
                    Rectangle::new([(x, base), (x + 1, v.max(base))], colour.filled())
                }))
                .map_err(|e| anyhow::anyhow!("drawing {name}: {e}"))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("drawing the legend: {e}"))?;
        Ok(())
    }
}
