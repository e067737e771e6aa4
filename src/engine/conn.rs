//! A core's connection as the engine uses it: the transport
//! (`client::conn::Connection`, which moves bytes and frames answers) and
//! the requests it carries, GETs sent ahead (HTTP/1.1 pipelining) included.
//! The pairing of answers with requests is kept here, not by convention at
//! each caller: the oldest GET sent ahead is the next answer read, and the
//! SSE-C key a refusal names is the one the answered request carried.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use crate::client::conn::Connection;

pub(super) struct EngineConn {
    transport: Connection,
    pub requests: Requests,
}

/// What a connection carries (I/O-free): the answers it owes, in order.
#[derive(Default)]
pub(super) struct Requests {
    /// Requests answered on this connection (a closed idle connection is
    /// retried once, not counted as an attempt: `request::get_head`).
    answered: u64,
    /// GETs sent ahead, behind the answer being read now, oldest first:
    /// their answers are the next to read.
    pipelined: VecDeque<Pipelined>,
    /// The SSE-C key (its index among the keys given) that the request
    /// whose answer is being read carried.
    answering_sse_c_key: Option<usize>,
}

/// A request sent before the previous answer was read.
#[derive(Debug)]
pub(super) struct Pipelined {
    /// The path and query asked for.
    pub path_and_query: String,
    /// First and last byte asked for; `None`: the whole object.
    pub range: Option<(u64, u64)>,
    pub sent: Instant,
    /// The SSE-C key it carried.
    pub sse_c_key: Option<usize>,
}

impl EngineConn {
    pub fn new(transport: Connection) -> EngineConn {
        EngineConn {
            transport,
            requests: Requests::default(),
        }
    }
}

impl Requests {
    /// Whether answers to GETs sent ahead are still to be read on it.
    pub fn owes_answers(&self) -> bool {
        !self.pipelined.is_empty()
    }

    /// How many GETs sent ahead are still unanswered.
    pub fn answers_owed(&self) -> usize {
        self.pipelined.len()
    }

    /// Whether the next answer on it is the one to the GET of
    /// `path_and_query` and `range`, sent ahead.
    pub fn answers_next(&self, path_and_query: &str, range: Option<(u64, u64)>) -> bool {
        self.pipelined
            .front()
            .is_some_and(|sent| sent.range == range && sent.path_and_query == path_and_query)
    }

    /// Records a GET just sent behind the answers owed.
    pub fn sent_ahead(&mut self, sent: Pipelined) {
        self.pipelined.push_back(sent);
    }

    /// The oldest GET sent ahead, whose answer is read next; `None` if
    /// nothing is owed.
    pub fn answer_next(&mut self) -> Option<Pipelined> {
        let next = self.pipelined.pop_front()?;
        self.answering_sse_c_key = next.sse_c_key;
        Some(next)
    }

    /// A request sent alone (nothing owed ahead of it) is answered next.
    pub fn answering(&mut self, sse_c_key: Option<usize>) {
        debug_assert!(self.pipelined.is_empty(), "an answer is owed first");
        self.answering_sse_c_key = sse_c_key;
    }

    /// The SSE-C key the request being answered carried.
    pub fn answering_sse_c_key(&self) -> Option<usize> {
        self.answering_sse_c_key
    }

    /// An answer was read to its end.
    pub fn answered(&mut self) {
        self.answered += 1;
    }

    /// Whether it answered a request before (it may since have been closed
    /// by the server while it idled).
    pub fn reused(&self) -> bool {
        self.answered > 0
    }
}

impl Deref for EngineConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.transport
    }
}

impl DerefMut for EngineConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.transport
    }
}

#[cfg(test)]
mod tests {
    use super::Pipelined;

    fn sent(path: &str, key: Option<usize>) -> Pipelined {
        Pipelined {
            path_and_query: path.into(),
            range: Some((0, 9)),
            sent: std::time::Instant::now(),
            sse_c_key: key,
        }
    }

    /// The answers owed are read oldest first, each with its own key, and
    /// only the oldest is "next".
    #[test]
    fn answers_pair_with_the_gets_sent_ahead_in_order() {
        let mut requests = super::Requests::default();
        requests.sent_ahead(sent("/a", Some(1)));
        requests.sent_ahead(sent("/b", None));
        assert!(requests.answers_next("/a", Some((0, 9))));
        assert!(!requests.answers_next("/b", Some((0, 9))));
        assert!(!requests.answers_next("/a", None));
        assert_eq!(requests.answer_next().unwrap().path_and_query, "/a");
        assert_eq!(requests.answering_sse_c_key(), Some(1));
        assert_eq!(requests.answer_next().unwrap().path_and_query, "/b");
        assert_eq!(requests.answering_sse_c_key(), None);
        assert!(requests.answer_next().is_none());
    }
}
