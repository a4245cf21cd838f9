//! The rule every reconciler follows for declared state: a state that fails its checks
//! is refused whole, the last good one stays in force, and the refusal is reported
//! until a good state arrives.

/// The last good state and why the latest one was refused.
#[derive(Debug)]
pub struct Intake<T> {
    last_good: Option<T>,
    refused: Option<String>,
}

impl<T> Default for Intake<T> {
    fn default() -> Self {
        Self {
            last_good: None,
            refused: None,
        }
    }
}

impl<T> Intake<T> {
    /// Takes a checked state, or keeps the last good one when `checked` is an error.
    /// Returns the state in force, if any.
    pub fn offer(&mut self, checked: Result<T, String>) -> Option<&T> {
        match checked {
            Ok(state) => {
                self.last_good = Some(state);
                self.refused = None;
            }
            Err(why) => {
                tracing::warn!(refused = %why, "declared state refused; the last good one stays");
                self.refused = Some(why);
            }
        }
        self.last_good.as_ref()
    }

    pub fn current(&self) -> Option<&T> {
        self.last_good.as_ref()
    }

    /// Why the latest state was refused; None if it was taken.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_state_keeps_the_last_good_one_and_says_why() {
        let mut intake = Intake::default();
        assert_eq!(intake.offer(Err("bad".into())), None);
        assert_eq!(intake.refused(), Some("bad"));
        assert_eq!(intake.offer(Ok(1)), Some(&1));
        assert_eq!(intake.refused(), None);
        assert_eq!(intake.offer(Err("worse".into())), Some(&1));
        assert_eq!(intake.refused(), Some("worse"));
        assert_eq!(intake.offer(Ok(2)), Some(&2));
    }
}
