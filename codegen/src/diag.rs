//! Front-end diagnostics: a message at a source span with a hint of what is allowed.
//! The proc macro turns them into `compile_error!` at that span.

use proc_macro2::Span;

/// An error in a kernel or device function, found while checking it.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Where the offending code starts.
    pub span: Span,
    /// Where it ends (the same as `span` for a single token).
    pub end: Span,
    /// What is wrong.
    pub message: String,
    /// What is allowed instead, if there is something useful to suggest.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            end: span,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint: what is allowed instead.
    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// The Rust source line of the span (0 when unknown).
    pub fn line(&self) -> u32 {
        self.span.start().line as u32
    }

    /// Message and hint as one text.
    pub fn text(&self) -> String {
        match &self.hint {
            Some(h) => format!("{}\n  = hint: {}", self.message, h),
            None => self.message.clone(),
        }
    }

    /// The error as a `syn::Error` covering the whole offending code.
    pub fn to_syn_error(&self) -> syn::Error {
        let first = proc_macro2::Ident::new("start", self.span);
        let last = proc_macro2::Ident::new("end", self.end);
        syn::Error::new_spanned(quote::quote!(#first #last), self.text())
    }

    /// A `compile_error!` covering the offending code.
    pub fn to_compile_error(&self) -> proc_macro2::TokenStream {
        self.to_syn_error().to_compile_error()
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line(), self.text())
    }
}

impl std::error::Error for Diagnostic {}

/// Shorthand: `Err(Diagnostic)` at the span of `tokens`.
pub fn err<T>(tokens: &dyn quote::ToTokens, message: impl Into<String>) -> Result<T, Diagnostic> {
    Err(at(tokens, message))
}

/// A diagnostic covering `tokens` from their first to their last token.
pub fn at(tokens: &dyn quote::ToTokens, message: impl Into<String>) -> Diagnostic {
    let stream = tokens.to_token_stream();
    let mut iter = stream.into_iter();
    let first = iter.next();
    let last = iter.last();
    let start = match &first {
        Some(proc_macro2::TokenTree::Group(g)) => g.span_open(),
        Some(t) => t.span(),
        None => Span::call_site(),
    };
    let end = match last.as_ref().or(first.as_ref()) {
        Some(proc_macro2::TokenTree::Group(g)) => g.span_close(),
        Some(t) => t.span(),
        None => start,
    };
    let mut d = Diagnostic::new(start, message);
    d.end = end;
    d
}

/// Shorthand: `Err(Diagnostic)` with a hint at the span of `tokens`.
pub fn err_hint<T>(
    tokens: &dyn quote::ToTokens,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Result<T, Diagnostic> {
    Err(at(tokens, message).hint(hint))
}

/// The span of anything printable as tokens.
pub fn span_of(tokens: &dyn quote::ToTokens) -> Span {
    syn::spanned::Spanned::span(&SpanOf(tokens))
}

struct SpanOf<'a>(&'a dyn quote::ToTokens);

impl quote::ToTokens for SpanOf<'_> {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        self.0.to_tokens(tokens)
    }
}

/// The result type of the front end.
pub type Res<T> = Result<T, Diagnostic>;
