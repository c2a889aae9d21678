//! Runs the `url_swap` example's application code against the shared cluster, so CI checks
//! that what the README's first command shows still works.

use crate::common;

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../../examples/url_swap.rs"]
mod url_swap;

#[tokio::test]
async fn url_swap_example_gives_the_same_results_on_sqlite_and_dqlite() {
    common::install_any_drivers();
    let on_sqlite = url_swap::app("sqlite::memory:").await.unwrap();
    let on_dqlite = url_swap::app(&common::shared_url("url_swap")).await.unwrap();
    assert_eq!(on_sqlite, on_dqlite);
    assert!(!on_sqlite.todos.is_empty());
}
