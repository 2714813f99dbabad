//! When will a count reach its limit? A least-squares trend over a sliding window, reported
//! only when the trend stands out from the noise: busy but balanced churn moves the task count
//! up and down by hundreds without going anywhere, a leak climbs steadily.

use std::collections::VecDeque;

pub struct GrowthTracker {
    window_seconds: f64,
    samples: VecDeque<(f64, f64)>,
}

/// A trend is reported only when its slope is this many standard errors above zero and the
/// rise it predicts over the window is this many residual deviations.
const SIGNIFICANCE: f64 = 4.0;
/// And only once the samples cover this share of the window.
const MIN_COVERAGE: f64 = 0.5;
const MIN_SAMPLES: usize = 8;
/// Samples kept over a window, whatever the push rate (`top --interval 1ms`).
const MAX_SAMPLES: usize = 512;

impl GrowthTracker {
    pub fn new(window_seconds: f64) -> Self {
        Self {
            window_seconds,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample at `time` seconds (any monotonic origin). Samples are kept at least a
    /// window / MAX_SAMPLES apart: the latest replaces the one before it while closer.
    pub fn push(&mut self, time: f64, value: f64) {
        let spacing = self.window_seconds / MAX_SAMPLES as f64;
        let len = self.samples.len();
        if len >= 2 && time - self.samples[len - 2].0 < spacing {
            self.samples.pop_back();
        }
        self.samples.push_back((time, value));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| time - t > self.window_seconds)
        {
            self.samples.pop_front();
        }
    }

    /// The span of samples a trend needs before it can be reported.
    pub fn history_needed_seconds(&self) -> f64 {
        self.window_seconds * MIN_COVERAGE
    }

    /// Growth per second, if the window shows a significant rising trend.
    pub fn growth_per_second(&self) -> Option<f64> {
        let n = self.samples.len();
        let (&(first, _), &(last, _)) = (self.samples.front()?, self.samples.back()?);
        if n < MIN_SAMPLES || last - first < self.history_needed_seconds() {
            return None;
        }
        let nf = n as f64;
        let mean_t = self.samples.iter().map(|s| s.0).sum::<f64>() / nf;
        let mean_v = self.samples.iter().map(|s| s.1).sum::<f64>() / nf;
        let (mut stt, mut stv) = (0.0, 0.0);
        for &(t, v) in &self.samples {
            stt += (t - mean_t) * (t - mean_t);
            stv += (t - mean_t) * (v - mean_v);
        }
        if stt <= 0.0 {
            return None;
        }
        let slope = stv / stt;
        if slope <= 0.0 {
            return None;
        }
        let intercept = mean_v - slope * mean_t;
        let residual_ss: f64 = self
            .samples
            .iter()
            .map(|&(t, v)| (v - intercept - slope * t).powi(2))
            .sum();
        let residual_sd = (residual_ss / (nf - 2.0)).sqrt();
        let standard_error = residual_sd / stt.sqrt();
        let rise = slope * (last - first);
        let significant =
            slope > SIGNIFICANCE * standard_error && rise > SIGNIFICANCE * residual_sd;
        significant.then_some(slope)
    }

    /// Seconds until the trend reaches `limit` from the latest sample; None without a
    /// significant rising trend.
    pub fn eta_seconds(&self, limit: f64) -> Option<f64> {
        let slope = self.growth_per_second()?;
        let &(_, current) = self.samples.back()?;
        Some(((limit - current) / slope).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-amplitude, amplitude].
    struct Noise(u64);

    impl Noise {
        fn next(&mut self, amplitude: f64) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amplitude
        }
    }

    const PID_MAX: f64 = 32768.0;
    const WINDOW: f64 = 15.0 * 60.0;
    const STEP: f64 = 5.0;

    /// Tasks on a node where 1000 short-lived processes a minute come and go: each lives a
    /// few hundred ms, so a sample sees a handful to a few dozen of them.
    fn churn(noise: &mut Noise) -> f64 {
        15.0 + noise.next(15.0)
    }

    #[test]
    fn four_zombies_a_minute_on_a_32768_node() {
        let mut tracker = GrowthTracker::new(WINDOW);
        let mut noise = Noise(7);
        let base = 600.0;
        let per_second = 4.0 / 60.0;
        let mut t = 0.0;
        let mut tasks = base;
        while t <= 2.0 * WINDOW {
            tasks = base + per_second * t + churn(&mut noise);
            tracker.push(t, tasks);
            t += STEP;
        }
        let eta = tracker.eta_seconds(PID_MAX).expect("a leak is a trend");
        let expected = (PID_MAX - (base + per_second * (t - STEP))) / per_second;
        assert!(
            (eta - expected).abs() / expected < 0.10,
            "eta {eta}, expected {expected}"
        );
        // About 5.5 days: the incident's timescale.
        assert!(eta > 4.0 * 86400.0 && eta < 7.0 * 86400.0, "{eta}");
        assert!(tasks < PID_MAX);
    }

    #[test]
    fn balanced_churn_has_no_eta() {
        let mut tracker = GrowthTracker::new(WINDOW);
        let mut noise = Noise(11);
        for i in 0..(3.0 * WINDOW / STEP) as usize {
            tracker.push(i as f64 * STEP, 600.0 + churn(&mut noise));
            assert_eq!(tracker.eta_seconds(PID_MAX), None, "sample {i}");
        }
    }

    #[test]
    fn falling_or_flat_counts_have_no_eta() {
        let mut falling = GrowthTracker::new(WINDOW);
        let mut flat = GrowthTracker::new(WINDOW);
        for i in 0..400 {
            let t = i as f64 * STEP;
            falling.push(t, 5000.0 - t / 10.0);
            flat.push(t, 700.0);
        }
        assert_eq!(falling.eta_seconds(PID_MAX), None);
        assert_eq!(flat.eta_seconds(PID_MAX), None);
    }

    #[test]
    fn needs_half_a_window_of_history() {
        let mut tracker = GrowthTracker::new(WINDOW);
        let last = (WINDOW * MIN_COVERAGE / STEP) as usize;
        for i in 0..last {
            tracker.push(i as f64 * STEP, 600.0 + i as f64);
        }
        assert_eq!(tracker.eta_seconds(PID_MAX), None);
        tracker.push(last as f64 * STEP, 600.0 + last as f64);
        assert!(tracker.eta_seconds(PID_MAX).is_some());
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut tracker = GrowthTracker::new(WINDOW);
        // A leak that stopped: an hour of growth, then a long flat stretch.
        let mut t = 0.0;
        while t < 3600.0 {
            tracker.push(t, 600.0 + t / 15.0);
            t += STEP;
        }
        assert!(tracker.eta_seconds(PID_MAX).is_some());
        let mut noise = Noise(3);
        while t < 3600.0 + 2.0 * WINDOW {
            tracker.push(t, 840.0 + churn(&mut noise));
            t += STEP;
        }
        assert_eq!(tracker.eta_seconds(PID_MAX), None);
    }

    #[test]
    fn fast_samples_stay_bounded() {
        // `top --interval 1ms`: 300 000 samples a 5-minute window.
        let window = 300.0;
        let mut tracker = GrowthTracker::new(window);
        let mut noise = Noise(5);
        let mut t = 0.0;
        while t < 2.0 * window {
            tracker.push(t, 600.0 + t / 6.0 + churn(&mut noise));
            t += 0.001;
        }
        assert!(
            tracker.samples.len() <= MAX_SAMPLES + 2,
            "{}",
            tracker.samples.len()
        );
        // Still the trend, 10 a minute, and still the latest sample.
        let slope = tracker.growth_per_second().expect("a steady rise");
        assert!((slope * 60.0 - 10.0).abs() < 0.5, "{slope}");
        assert_eq!(tracker.samples.back().map(|s| s.0), Some(t - 0.001));
    }
}
