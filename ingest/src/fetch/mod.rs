//! Downloading images named by `image_url`: the address guard ([`guard`]) and the fetcher
//! ([`client`]).

pub mod client;
pub mod guard;

pub use client::{FetcherBuildError, ImageFetcher};
pub use guard::{check_ip, classify, BlockedAddress, GuardedResolver};
