//! Error messages for people: an error and its causes on one line, each
//! cause shown once. (`{:#}` repeats a cause whose text the outer message
//! already includes, e.g. "Connection refused: Connection refused".)

use std::error::Error;

/// `error: cause: cause ...`, skipping causes already contained in the text.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// `println!` that ends the program quietly when standard output is closed
/// (`pulih-controller snapshots | head`) instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach x: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let e = Outer { source: std::io::Error::other("refused") };
        assert_eq!(chain(&e), "cannot reach x: refused");
    }
}
