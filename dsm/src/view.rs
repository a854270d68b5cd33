//! What `dsm up` shows while it runs: on a terminal, a few live lines (indicatif); otherwise a
//! plain line every [`PLAIN_EVERY`]. Both are drawn from one [`Progress`], read from the roles'
//! `/metrics` and the registry, never from inside a role.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain view prints a line.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Everything the view shows, as of one poll.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Env steps simulated so far by every actor (this run), and per second.
    pub env_steps: f64,
    pub env_steps_per_second: f64,
    /// The recording's target (0: unbounded).
    pub env_steps_target: u64,
    /// Steps stored over all shards, and the shards reporting.
    pub replay_steps: f64,
    pub replay_shards: usize,
    pub learner_step: f64,
    pub learner_target: u64,
    pub iterations_per_second: f64,
    pub discriminator_loss: Option<f64>,
    pub generator_loss: Option<f64>,
    /// The newest checkpoint in the registry: (version, step).
    pub checkpoint: Option<(u64, u64)>,
    /// The newest evaluated version, its headline as text, and the report.
    pub evaluation: Option<(u64, String, String)>,
    /// What the run is doing, when it is not simply training ("waiting for the evaluation of …").
    pub phase: Option<String>,
}

impl Progress {
    /// Seconds left at the current rate, once there is one.
    pub fn eta(&self) -> Option<Duration> {
        let left = (self.learner_target as f64 - self.learner_step).max(0.0);
        (self.iterations_per_second > 0.0).then(|| Duration::from_secs_f64(left / self.iterations_per_second))
    }

    fn actors_line(&self) -> String {
        let target = if self.env_steps_target == 0 {
            String::new()
        } else {
            format!(" of {}", count(self.env_steps_target as f64))
        };
        format!("{}{target} env steps, {}/s", count(self.env_steps), count(self.env_steps_per_second))
    }

    fn replay_line(&self) -> String {
        format!("{} steps stored in {} shards", count(self.replay_steps), self.replay_shards)
    }

    fn learner_line(&self) -> String {
        let loss =
            |l: Option<f64>| l.filter(|v| v.is_finite()).map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
        let eta = self.eta().map(|d| format!(", ETA {}", duration(d))).unwrap_or_default();
        format!(
            "{:.1} it/s, D loss {}, G loss {}{eta}",
            self.iterations_per_second,
            loss(self.discriminator_loss),
            loss(self.generator_loss)
        )
    }

    fn registry_line(&self) -> String {
        let checkpoint = match self.checkpoint {
            Some((v, s)) => format!("checkpoint v{v} (step {s})"),
            None => "no checkpoint yet".into(),
        };
        let evaluation = match &self.evaluation {
            Some((v, headline, _)) => format!("; evaluated v{v}: {headline}"),
            None => String::new(),
        };
        let phase = self.phase.as_ref().map(|p| format!(" — {p}")).unwrap_or_default();
        format!("{checkpoint}{evaluation}{phase}")
    }

    /// The one-line form, for logs.
    pub fn plain_line(&self, elapsed: Duration) -> String {
        format!(
            "[{}] actors: {} | replay: {} | learner: step {}/{}, {} | {}",
            duration(elapsed),
            self.actors_line(),
            self.replay_line(),
            self.learner_step as u64,
            self.learner_target,
            self.learner_line(),
            self.registry_line()
        )
    }
}

/// The view itself.
pub enum View {
    Live { multi: MultiProgress, actors: ProgressBar, replay: ProgressBar, learner: ProgressBar, registry: ProgressBar },
    Plain { start: Instant, last: Option<Instant> },
}

impl View {
    /// Live on a terminal (unless `plain`), plain lines otherwise.
    pub fn new(plain: bool, learner_target: u64) -> View {
        if plain || !std::io::stderr().is_terminal() {
            return View::Plain { start: Instant::now(), last: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let line = |prefix: &str| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(ProgressStyle::with_template("{prefix:>9.bold} {msg}").expect("a valid template"));
            bar.set_prefix(prefix.to_string());
            bar
        };
        let actors = line("actors");
        let replay = line("replay");
        let learner = multi.add(ProgressBar::new(learner_target));
        learner.set_style(
            ProgressStyle::with_template("{prefix:>9.bold} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        learner.set_prefix("learner");
        let registry = line("registry");
        View::Live { multi, actors, replay, learner, registry }
    }

    /// Shows `p` (the plain view only every [`PLAIN_EVERY`]).
    pub fn update(&mut self, p: &Progress) {
        match self {
            View::Live { actors, replay, learner, registry, .. } => {
                actors.set_message(p.actors_line());
                replay.set_message(p.replay_line());
                learner.set_position(p.learner_step as u64);
                learner.set_message(p.learner_line());
                registry.set_message(p.registry_line());
            }
            View::Plain { start, last } => {
                if last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                    *last = Some(Instant::now());
                    eprintln!("{}", p.plain_line(start.elapsed()));
                }
            }
        }
    }

    /// A message above the live lines (or a plain line).
    pub fn say(&self, message: &str) {
        match self {
            View::Live { multi, .. } => {
                if multi.println(message).is_err() {
                    eprintln!("{message}");
                }
            }
            View::Plain { .. } => eprintln!("{message}"),
        }
    }

    /// Leaves the last state on screen and stops drawing.
    pub fn finish(&self) {
        if let View::Live { actors, replay, learner, registry, .. } = self {
            for bar in [actors, replay, learner, registry] {
                bar.abandon();
            }
        }
    }
}

/// 12345 → "12,345"; fractions are dropped.
pub fn count(x: f64) -> String {
    let digits = format!("{}", x.max(0.0).round() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "42 s", "3 min 05 s", "2 h 07 min".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1234.0), "1,234");
        assert_eq!(count(24_000_000.0), "24,000,000");
        assert_eq!(duration(Duration::from_secs(42)), "42 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(duration(Duration::from_secs(7620)), "2 h 07 min");
    }

    #[test]
    fn the_plain_line_holds_every_figure() {
        let p = Progress {
            env_steps: 24_000.0,
            env_steps_target: 24_000,
            replay_steps: 24_000.0,
            replay_shards: 2,
            learner_step: 500.0,
            learner_target: 1000,
            iterations_per_second: 100.0,
            discriminator_loss: Some(0.25),
            generator_loss: Some(0.5),
            checkpoint: Some((2, 500)),
            evaluation: Some((1, "map_cosine_mean 0.9".into(), "/r/report.md".into())),
            ..Default::default()
        };
        assert_eq!(p.eta(), Some(Duration::from_secs(5)));
        let line = p.plain_line(Duration::from_secs(3));
        for part in [
            "24,000 of 24,000 env steps",
            "24,000 steps stored in 2 shards",
            "step 500/1000",
            "100.0 it/s",
            "D loss 0.2500",
            "G loss 0.5000",
            "ETA 5 s",
            "checkpoint v2 (step 500)",
            "evaluated v1: map_cosine_mean 0.9",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }
}
