//! A message sink that panics (its own process: the sink is set once per
//! process).

/// The panic stays in the sink: the line goes to stderr, and the caller (a
/// core thread telling about a file) goes on; it used to fail that file and
/// report an internal error of ringdown (h35 #7).
#[test]
fn a_panicking_sink_does_not_unwind_into_the_run() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&seen);
    ringdown::set_message_sink(move |line| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if line.contains("failed") {
            panic!("the program's sink panics on {line:?}");
        }
    })
    .unwrap();
    let told = std::panic::catch_unwind(|| {
        ringdown::say_message(format_args!("ringdown: failed: b: HTTP 503"));
        ringdown::say_message(format_args!("ringdown: note: next"));
    });
    assert!(told.is_ok(), "the sink's panic reached the caller");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}
