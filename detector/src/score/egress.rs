//! Per-pod egress baseline: samples of one sampling tick are summed into a window, each closed
//! window's rate is compared with an exponentially weighted moving average of past rates.

use super::config::EgressConfig;

/// A rate well above the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    /// Bytes per second of the window that fired.
    pub rate: f64,
    /// The baseline it was compared with.
    pub baseline: f64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ns: i64,
    bytes: u64,
    interval_ms: u64,
}

/// Learned egress rate of one pod.
#[derive(Debug, Clone, Default)]
pub struct EgressBaseline {
    mean: f64,
    samples: u32,
    window: Option<Window>,
    spiking: bool,
}

impl EgressBaseline {
    /// Adds one egress sample (taken at `now_ns`); returns a spike when a window closes at a rate
    /// above both the factor times the baseline and the floor, once per spike.
    pub fn observe(
        &mut self,
        config: &EgressConfig,
        now_ns: i64,
        bytes: u64,
        interval_ms: u64,
    ) -> Option<Spike> {
        let interval_ms = interval_ms.max(1);
        // Samples of the containers of one pod taken at one tick share a window.
        let same_tick =
            |w: &Window| now_ns.saturating_sub(w.start_ns) < (w.interval_ms as i64) * 500_000;
        match &mut self.window {
            Some(w) if same_tick(w) => {
                w.bytes = w.bytes.saturating_add(bytes);
                w.interval_ms = w.interval_ms.max(interval_ms);
                None
            }
            _ => {
                let closed = self.window.replace(Window {
                    start_ns: now_ns,
                    bytes,
                    interval_ms,
                });
                closed.and_then(|w| {
                    self.evaluate(config, w.bytes as f64 * 1000.0 / w.interval_ms as f64)
                })
            }
        }
    }

    /// The learned rate in bytes per second.
    pub fn baseline(&self) -> f64 {
        self.mean
    }

    fn evaluate(&mut self, config: &EgressConfig, rate: f64) -> Option<Spike> {
        if self.samples < config.warmup_samples {
            self.samples += 1;
            self.mean += (rate - self.mean) / f64::from(self.samples);
            return None;
        }
        let spike = rate > config.factor * self.mean && rate > config.floor_bytes_per_s;
        // A spike is learned only up to the threshold, so sustained exfiltration does not
        // become normal at once, while a lasting change of traffic does over time.
        let learned = rate.min(config.factor * self.mean.max(1.0));
        let baseline = self.mean;
        self.mean += config.alpha * (learned - self.mean);
        let fire = spike && !self.spiking;
        self.spiking = spike;
        fire.then_some(Spike { rate, baseline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn feed(b: &mut EgressBaseline, config: &EgressConfig, t: i64, bytes: u64) -> Option<Spike> {
        b.observe(config, t * S, bytes, 1000)
    }

    #[test]
    fn warm_up_then_a_spike_fires_once() {
        let config = EgressConfig {
            warmup_samples: 10,
            floor_bytes_per_s: 100_000.0,
            ..EgressConfig::default()
        };
        let mut b = EgressBaseline::default();
        for t in 0..50 {
            assert_eq!(feed(&mut b, &config, t, 50_000), None);
        }
        assert!((b.baseline() - 50_000.0).abs() < 1.0);
        // The window of t=50 closes when t=51 arrives.
        assert_eq!(feed(&mut b, &config, 50, 5_000_000), None);
        let spike = feed(&mut b, &config, 51, 5_000_000).unwrap();
        assert_eq!(spike.rate, 5_000_000.0);
        assert_eq!(
            feed(&mut b, &config, 52, 5_000_000),
            None,
            "fires once per spike"
        );
    }

    #[test]
    fn below_the_floor_never_fires() {
        let config = EgressConfig {
            warmup_samples: 5,
            ..EgressConfig::default()
        };
        let mut b = EgressBaseline::default();
        for t in 0..20 {
            feed(&mut b, &config, t, 1_000);
        }
        assert_eq!(feed(&mut b, &config, 20, 500_000), None);
        assert_eq!(feed(&mut b, &config, 21, 500_000), None);
    }

    #[test]
    fn samples_of_one_tick_are_summed() {
        let config = EgressConfig {
            warmup_samples: 1,
            ..EgressConfig::default()
        };
        let mut b = EgressBaseline::default();
        b.observe(&config, 0, 100, 1000);
        b.observe(&config, 1_000_000, 300, 1000);
        b.observe(&config, S, 0, 1000);
        assert_eq!(b.baseline(), 400.0);
    }
}
