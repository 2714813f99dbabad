//! One `tp_btf` hook per file.

mod exit;
mod fork;
mod free;
mod wait;
