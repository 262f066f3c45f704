//! The Markdown of `docs/vhost-user-cross-domain.1.md`, as roff for the manual page.
//!
//! Only the subset that file uses (pandoc's manual-page style) is understood, and anything else
//! is kept as plain text rather than guessed at:
//!
//! - `% title` lines and `<!-- comments -->` are dropped;
//! - `# HEADING` is a section (`.SH`);
//! - a line followed by one starting with `:   ` is a term and its definition (`.TP`), the
//!   definition continuing on lines indented by four spaces;
//! - after a blank line, lines indented by four spaces are an example, kept as written (`.nf`);
//! - other lines are paragraphs (`.PP`), joined up to the next blank line;
//! - inline, `**bold**`, `*italic*` (`***` closes one and opens the other, as in
//!   `*PATH***.lock**`), and `\x` for a literal `x`.

use roff::{bold, italic, roman, Inline, Roff};

/// The two lines every rendered roff fragment starts with: they define `\*(Aq`, the string
/// apostrophes are written as.
pub const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// Splits `text` into the section `# heading` (heading line included) and everything after
/// it; `None` if there is no such section. Whatever comes before the section is dropped.
pub fn split_after<'a>(text: &'a str, heading: &str) -> Option<(&'a str, &'a str)> {
    let marker = format!("# {heading}\n");
    let start = if text.starts_with(&marker) {
        0
    } else {
        text.find(&format!("\n{marker}"))? + 1
    };
    let body = &text[start + marker.len()..];
    let end = body
        .find("\n# ")
        .map_or(text.len(), |i| start + marker.len() + i + 1);
    Some((&text[start..end], &text[end..]))
}

/// `md` as roff (with the [`PREAMBLE`]).
pub fn to_roff(md: &str) -> String {
    let mut roff = Roff::new();
    let lines: Vec<&str> = without_comments(md);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('%') {
            i += 1;
        } else if let Some(heading) = line.strip_prefix("# ") {
            roff.control("SH", [heading.trim()]);
            i += 1;
        } else if line.starts_with("    ") {
            // An example: up to the first line that is neither indented nor blank.
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].starts_with("    ") || lines[i].trim().is_empty()) {
                block.push(lines[i].get(4..).unwrap_or(""));
                i += 1;
            }
            while block.last().is_some_and(|l| l.trim().is_empty()) {
                block.pop();
            }
            roff.control("PP", [])
                .control("RS", ["4"])
                .control("nf", []);
            for l in block {
                roff.text([roman(l)]);
            }
            roff.control("fi", []).control("RE", []);
        } else if lines
            .get(i + 1)
            .is_some_and(|next| next.starts_with(":   "))
        {
            roff.control("TP", []).text(inline(line));
            let mut definition = vec![lines[i + 1][4..].trim()];
            i += 2;
            while i < lines.len() && lines[i].starts_with("    ") {
                definition.push(lines[i].trim());
                i += 1;
            }
            roff.text(inline(&definition.join(" ")));
        } else {
            let mut paragraph = Vec::new();
            while i < lines.len() && !lines[i].trim().is_empty() && !lines[i].starts_with("# ") {
                paragraph.push(lines[i].trim());
                i += 1;
            }
            roff.control("PP", []).text(inline(&paragraph.join(" ")));
        }
    }
    roff.render()
}

/// The lines of `md` outside `<!-- … -->` comments.
fn without_comments(md: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut in_comment = false;
    for line in md.lines() {
        if in_comment || line.trim_start().starts_with("<!--") {
            // A comment ends on the line that closes it.
            in_comment = !line.contains("-->");
        } else {
            lines.push(line);
        }
    }
    lines
}

/// Inline markup of one paragraph as roff inlines.
fn inline(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let (mut is_bold, mut is_italic) = (false, false);
    let mut current = String::new();
    let flush = |out: &mut Vec<Inline>, current: &mut String, is_bold: bool, is_italic: bool| {
        if !current.is_empty() {
            let text = std::mem::take(current);
            out.push(if is_bold {
                bold(text)
            } else if is_italic {
                italic(text)
            } else {
                roman(text)
            });
        }
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '*' => {
                let mut run = 1;
                while chars.peek() == Some(&'*') {
                    chars.next();
                    run += 1;
                }
                flush(&mut out, &mut current, is_bold, is_italic);
                match run {
                    1 => is_italic = !is_italic,
                    2 => is_bold = !is_bold,
                    _ if is_italic => (is_italic, is_bold) = (false, !is_bold),
                    _ if is_bold => (is_bold, is_italic) = (false, !is_italic),
                    _ => (is_bold, is_italic) = (true, true),
                }
            }
            c => current.push(c),
        }
    }
    flush(&mut out, &mut current, is_bold, is_italic);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(md: &str) -> String {
        to_roff(md).trim_start_matches(PREAMBLE).to_owned()
    }

    #[test]
    fn blocks() {
        let md = "% T(1)\n<!-- a\nnote -->\n# EXIT STATUS\n\nSome *text*\nwrapped.\n\n\
                  **0**\n:   Clean\n    stop.\n\n    code --x \\\n        more\n\n# SEE ALSO\n";
        assert_eq!(
            body(md),
            ".SH \"EXIT STATUS\"\n.PP\nSome \\fItext\\fR wrapped.\n.TP\n\\fB0\\fR\nClean stop.\n\
             .PP\n.RS 4\n.nf\ncode \\-\\-x \\\\\n    more\n.fi\n.RE\n.SH \"SEE ALSO\"\n"
        );
    }

    #[test]
    fn inline_markup() {
        assert_eq!(
            body("*PATH***.lock** and **\\-\\-channel 1:***PATH* it's"),
            ".PP\n\\fIPATH\\fR\\fB.lock\\fR and \\fB\\-\\-channel 1:\\fR\\fIPATH\\fR it\\*(Aqs\n"
        );
    }

    #[test]
    fn sections() {
        let md = "% t\n# DESCRIPTION\n\nd\n\n# EXIT STATUS\n\ne\n";
        let (description, rest) = split_after(md, "DESCRIPTION").unwrap();
        assert_eq!(description, "# DESCRIPTION\n\nd\n\n");
        assert_eq!(rest, "# EXIT STATUS\n\ne\n");
        assert!(split_after(md, "NAME").is_none());
        let (only, after) = split_after("# DESCRIPTION\nx\n", "DESCRIPTION").unwrap();
        assert_eq!((only, after), ("# DESCRIPTION\nx\n", ""));
    }
}
