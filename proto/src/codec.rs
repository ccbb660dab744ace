//! The codec of the Pinecone data plane's generated service and client: prost's, except
//! that a message that cannot be decoded (malformed protobuf, a string field that is not
//! UTF-8, nesting deeper than prost's recursion limit) is `INVALID_ARGUMENT`, the client's
//! fault, where prost's codec answers `INTERNAL`. The node-to-node API keeps prost's codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Deepest nesting of messages prost decodes (its fixed `RECURSION_LIMIT`).
pub const PROST_RECURSION_LIMIT: u32 = 100;

/// Prost encoding; decoding failures are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

/// Prost's decoder with its errors as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            // Only filters and metadata (`Struct`) nest; either is far past its own limit.
            if status.message().contains("recursion limit reached") {
                return Status::invalid_argument(format!(
                    "malformed request: nesting deeper than {PROST_RECURSION_LIMIT} levels of \
                     Protobuf messages (a filter takes at most 8 levels of $and / $or, and \
                     metadata is flat)"
                ));
            }
            Status::invalid_argument(format!(
                "malformed request: {} (a Protobuf message of this method was expected)",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
