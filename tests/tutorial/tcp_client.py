# From the tutorial Tether grew out of (the project's shared seed), verbatim: the test
# suite runs it unchanged against `tether listen --raw`.
#Client side script
import socket #loads the socket library
def packet(obj):
    """
    Takes as argument any object that can be converted to string and converts it to bytes
    """
    obj = str(obj)
    obj = bytes(obj, 'utf-8')
    return obj
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM) #Establish the type of socket we want
s.connect(('127.0.0.1', 5003)) #Connect to the desired ip address and port
s.send(b'hello') #Send the message as a bytes object
s.send(packet(102.35))
data = s.recv(5) #Receive a message of 5 bytes in size
print(data) #Print the received message
s.close() #Close the connection
