//! Finding our public address with a STUN binding request (RFC 5389 §7),
//! sans-IO: build the request, read the answer. The engine sends it from
//! the SIP socket, so the answer names the NAT mapping SIP uses.
//! stun_codec does the message format.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

use super::{SipError, USER_AGENT};

/// A binding request in flight.
#[derive(Debug)]
pub struct BindingRequest {
    transaction: TransactionId,
    /// The request's bytes, sent again on each retransmission.
    pub data: Vec<u8>,
}

impl BindingRequest {
    pub fn new() -> Result<Self, SipError> {
        let transaction = TransactionId::new(rand::random());
        let mut message = Message::<Attribute>::new(MessageClass::Request, BINDING, transaction);
        let software = Software::new(USER_AGENT.to_string()).map_err(|e| SipError::Parse(e.to_string()))?;
        message.add_attribute(software);
        let data = MessageEncoder::new().encode_into_bytes(message).map_err(|e| SipError::Parse(e.to_string()))?;
        Ok(Self { transaction, data })
    }

    /// The address the server saw us at, if `datagram` is the success
    /// response to this request: XOR-MAPPED-ADDRESS, or the older
    /// MAPPED-ADDRESS of RFC 3489 servers. Anything else is `None`.
    pub fn mapped_address(&self, datagram: &[u8]) -> Option<SocketAddr> {
        let message = MessageDecoder::<Attribute>::new().decode_from_bytes(datagram).ok()?.ok()?;
        if message.class() != MessageClass::SuccessResponse || message.transaction_id() != self.transaction {
            return None;
        }
        let xor = message.get_attribute::<XorMappedAddress>().map(|a| a.address());
        xor.or_else(|| message.get_attribute::<MappedAddress>().map(|a| a.address()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(request: &BindingRequest, class: MessageClass, mapped: SocketAddr) -> Vec<u8> {
        let decoded = MessageDecoder::<Attribute>::new().decode_from_bytes(&request.data).unwrap().unwrap();
        let mut message = Message::<Attribute>::new(class, BINDING, decoded.transaction_id());
        message.add_attribute(XorMappedAddress::new(mapped));
        MessageEncoder::new().encode_into_bytes(message).unwrap()
    }

    #[test]
    fn the_answer_to_our_request_gives_the_mapped_address() {
        let request = BindingRequest::new().unwrap();
        assert_eq!(&request.data[4..8], &[0x21, 0x12, 0xa4, 0x42], "the magic cookie of RFC 5389");
        let mapped: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        assert_eq!(request.mapped_address(&response(&request, MessageClass::SuccessResponse, mapped)), Some(mapped));
        // Not ours, not a success, or not STUN at all.
        let other = BindingRequest::new().unwrap();
        assert_eq!(request.mapped_address(&response(&other, MessageClass::SuccessResponse, mapped)), None);
        assert_eq!(request.mapped_address(&response(&request, MessageClass::ErrorResponse, mapped)), None);
        assert_eq!(request.mapped_address(b"SIP/2.0 200 OK\r\n\r\n"), None);
        assert_eq!(request.mapped_address(&[]), None);
    }
}
